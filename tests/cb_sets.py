"""Writers of small sets in CLIP_benchmark's webdataset layout, for the tests.

They write what ``clip_benchmark.webdataset_builder.convert_dataset`` / ``convert_retrieval_dataset``
write: webdataset's ``ShardWriter`` with keys ``s%07d``, ``.cls`` ints, ``.npy`` arrays, ``.txt``
captions joined by newlines, ``classnames.txt`` / ``zeroshot_classification_templates.txt`` /
``dataset_type.txt`` written with ``print(..., sep="\\n", end="\\n")``, and ``<split>/nshards.txt``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from test_eval_data import CLASSES, draw


def encode(image: Image.Image, fmt: str = "webp") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **({"format": "webp", "lossless": True} if fmt == "webp" else {"format": fmt.replace("jpg", "jpeg")}))
    return buffer.getvalue()


def write_split(root: Path, split: str, samples: Sequence[dict], max_count: int = 8) -> int:
    """Samples: dicts of extension → value (bytes, int, array, str); returns the shard count."""
    import webdataset

    (root / split).mkdir(parents=True, exist_ok=True)
    with webdataset.ShardWriter(str(root / split / "%d.tar"), maxcount=max_count, verbose=0) as sink:
        for index, sample in enumerate(samples):
            sink.write({"__key__": "s%07d" % index, **sample})
        shards = sink.shard
    (root / split / "nshards.txt").write_text(f"{shards}\n")
    return shards


def write_meta(root: Path, classnames=None, templates=None, dataset_type=None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, lines in (("classnames.txt", classnames), ("zeroshot_classification_templates.txt", templates)):
        if lines is not None:
            (root / name).write_text("\n".join(lines) + "\n")
    if dataset_type is not None:
        (root / "dataset_type.txt").write_text(dataset_type + "\n")


def shape_images(labels: Sequence[int], seed: int, classes=CLASSES) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [draw(classes[c][1], classes[c][0], rng) for c in labels]


def classification_set(root: Path, per_class: int = 4, classes=CLASSES, names=None, train: bool = True,
                       fmt: str = "webp", max_count: int = 8, templates=("a photo of a {c}.", "a {c}.")) -> Path:
    """A classification set of drawn shapes (class i = classes[i]), test (+ train) split."""
    write_meta(root, names or [f"{c} {s}" for c, s in classes], templates)
    for split, seed in (("test", 1), ("train", 2)) if train else (("test", 1),):
        labels = [c for c in range(len(classes)) for _ in range(per_class)]
        images = shape_images(labels, seed, classes)
        write_split(root, split, [{fmt: encode(im, fmt), "cls": c} for im, c in zip(images, labels)], max_count)
    return root


def multilabel_set(root: Path, n: int = 24, seed: int = 3, classnames=None) -> tuple[Path, np.ndarray]:
    """Images labelled with their shape's class (and every third with the next class too);
    returns (root, targets [n, C]). With ``classnames``, C = their count (images cycle over CLASSES)."""
    rng = np.random.default_rng(seed)
    classes = list(classnames or [f"{c} {s}" for c, s in CLASSES])
    targets = np.zeros((n, len(classes)), dtype=np.float32)
    samples = []
    for i in range(n):
        c = int(rng.integers(len(classes)))
        targets[i, c] = 1
        if i % 3 == 0:
            targets[i, (c + 1) % len(classes)] = 1
        colour, shape = CLASSES[c % len(CLASSES)]
        samples.append({"png": encode(draw(shape, colour, rng), "png"), "npy": targets[i]})
    write_meta(root, classes, ["a photo of a {c}."], "multilabel")
    write_split(root, "test", samples)
    return root, targets


def retrieval_set(root: Path, n: int = 12, seed: int = 4) -> tuple[Path, list[list[str]]]:
    rng = np.random.default_rng(seed)
    captions, samples = [], []
    for i in range(n):
        colour, shape = CLASSES[i % len(CLASSES)]
        lines = [f"a {colour} {shape}, number {i}.", f"picture {i}: a {colour} {shape}."][: 1 + i % 2]
        captions.append(lines)
        samples.append({"jpg": encode(draw(shape, colour, rng), "jpg"), "txt": "\n".join(lines)})
    write_meta(root, dataset_type="retrieval")
    write_split(root, "test", samples, max_count=5)
    return root, captions
