"""Evaluation sets on disk: ImageFolder/class names, retrieval from JSON/CSV, discovery, features.

Also the small generators the other eval tests import (`make_world`, `tiny_clip`): coloured
shapes drawn with PIL, so the tests depend on nothing but themselves.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from clipforge.eval.datasets import encode_images, load_classification_set, load_retrieval_set
from clipforge.eval.layout import discover

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle", "triangle")


def draw(shape: str, colour: str, rng: np.random.Generator, size: int = 32, background: int | None = None) -> Image.Image:
    bg = int(rng.integers(90, 170)) if background is None else background
    image = Image.new("RGB", (size, size), (bg, bg, bg))
    d = ImageDraw.Draw(image)
    r = int(rng.integers(size // 5, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
    box = (cx - r, cy - r, cx + r, cy + r)
    fill = COLOURS[colour]
    if shape == "square":
        d.rectangle(box, fill=fill)
    elif shape == "circle":
        d.ellipse(box, fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    noise = rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def write_task(root: Path, classes: list[tuple[str, str]], per_class: int, seed: int, names=None, background=None) -> None:
    """ImageFolder task: folders ``NN_<colour>_<shape>``, classnames.json in folder order."""
    rng = np.random.default_rng(seed)
    for i, (colour, shape) in enumerate(classes):
        folder = root / f"{i:02d}_{colour}_{shape}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            draw(shape, colour, rng, background=background).save(folder / f"{j:03d}.png")
    names = names or [f"{c} {s}" for c, s in classes]
    (root / "classnames.json").write_text(json.dumps(names))


def write_shards(out: Path, images: list[Image.Image], per_shard: int = 20) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for shard, start in enumerate(range(0, len(images), per_shard)):
        with tarfile.open(out / f"{shard:05d}.tar", "w") as tar:
            for i, image in enumerate(images[start : start + per_shard], start):
                for name, data in ((f"{i:06d}.png", _png(image)), (f"{i:06d}.txt", b"a shape")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


CLASSES = [("red", "square"), ("green", "circle"), ("blue", "triangle"), ("yellow", "square"), ("red", "circle"), ("blue", "square")]


def make_world(root: Path, per_class: int = 20, train_images: int = 60) -> Path:
    """A miniature data root: two tasks + a shifted copy, a retrieval set, training shards."""
    write_task(root / "eval" / "colour_shape", CLASSES, per_class, seed=1)
    write_task(root / "eval" / "colour_shape_dark", CLASSES, per_class // 2, seed=2, background=30)
    write_task(root / "eval" / "shape", [("red", s) for s in SHAPES], per_class, seed=3, names=list(SHAPES))
    retrieval, captions, rng = root / "eval" / "retrieval", {}, np.random.default_rng(4)
    retrieval.mkdir(parents=True)
    for i in range(16):
        colour, shape = CLASSES[i % len(CLASSES)]
        draw(shape, colour, rng).save(retrieval / f"{i:03d}.png")
        # Distinct captions: equal texts would tie exactly, and tie order is not part of the metric.
        captions[f"{i:03d}.png"] = [f"a {colour} {shape}, number {i}.", f"picture {i}: a {colour} {shape}."][: 1 + i % 2]
    (retrieval / "captions.json").write_text(json.dumps(captions))
    rng = np.random.default_rng(5)
    write_shards(root / "train", [draw(s, c, rng) for c, s in (CLASSES * train_images)[:train_images]])
    return root


def tiny_clip():
    """A real (random) CLIP model and OpenAI's tokenizer from the reference fixtures."""
    import clipforge
    from clipforge.tokenizer import Tokenizer

    from conftest import REFERENCE_DIR

    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit")
    tokenizer = Tokenizer.from_merges(REFERENCE_DIR / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz")
    from clipforge.transforms import eval_transform

    return model, eval_transform(model.image_size), tokenizer


def aligned_clip():
    """``tiny_clip`` with its image projection fitted (ridge least squares, closed form) so that
    images of each class in ``CLASSES`` map onto that class's prompt embedding: still a real CLIP
    model, but one whose zero-shot predictions vary with the image (a random one predicts one class)."""
    from clipforge.eval.overlap import ImageBytes
    from clipforge.zeroshot import build_classifier, load_templates

    model, preprocess, tokenizer = tiny_clip()
    rng = np.random.default_rng(10)
    labels = np.repeat(np.arange(len(CLASSES)), 16)
    images = [draw(CLASSES[c][1], CLASSES[c][0], rng) for c in labels]
    x = encode_images(model, preprocess, ImageBytes(images, preprocess), progress=False).pre_projection.double()
    head = build_classifier(model, tokenizer, [f"{c} {s}" for c, s in CLASSES], load_templates("general"))
    target = head[torch.as_tensor(labels)].double()  # [N, D]
    proj = torch.linalg.solve(x.t() @ x + 1e-3 * torch.eye(x.shape[1], dtype=torch.float64), x.t() @ target)
    with torch.no_grad():
        model.visual.proj.copy_(proj.float())
    return model, preprocess, tokenizer


# ---- tests ------------------------------------------------------------------------------------


def test_classnames_follow_sorted_folders_when_not_folder_names(tmp_path):
    write_task(tmp_path, [("red", "square"), ("blue", "circle")], 2, seed=0, names=["crimson box", "navy disc"])
    data = load_classification_set(tmp_path)
    assert data.classnames == ("crimson box", "navy disc")
    assert [p.parent.name for p in data.paths] == ["00_red_square"] * 2 + ["01_blue_circle"] * 2
    assert data.labels.tolist() == [0, 0, 1, 1]


def test_classnames_matched_by_name_and_from_folders(tmp_path):
    for folder in ("b_cat", "a_dog"):
        (tmp_path / "x" / folder).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "x" / folder / "1.png")
    assert load_classification_set(tmp_path / "x").classnames == ("a dog", "b cat")  # folder names, _ → space
    (tmp_path / "x" / "classnames.json").write_text(json.dumps(["B cat", "A dog"]))  # matched by name, any order
    assert load_classification_set(tmp_path / "x").classnames == ("A dog", "B cat")
    (tmp_path / "x" / "classnames.json").write_text(json.dumps({"a_dog": "dog", "b_cat": "cat"}))
    assert load_classification_set(tmp_path / "x").classnames == ("dog", "cat")


def test_bad_classification_sets_name_the_problem(tmp_path):
    write_task(tmp_path, [("red", "square"), ("blue", "circle")], 1, seed=0)
    (tmp_path / "classnames.json").write_text(json.dumps(["only one"]))
    with pytest.raises(ValueError, match="1 class names but 2 class folders"):
        load_classification_set(tmp_path)
    (tmp_path / "classnames.json").write_text("{not json")
    with pytest.raises(ValueError, match="classnames.json: not valid JSON"):
        load_classification_set(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_classification_set(tmp_path / "missing")


def test_retrieval_from_json_and_csv(tmp_path):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "captions.json").write_text(json.dumps({"a.png": ["one", "two"], "b.png": ["three"]}))
    data = load_retrieval_set(tmp_path)
    assert [p.name for p in data.paths] == ["a.png", "b.png"]
    assert data.captions == ("one", "two", "three") and data.caption_image.tolist() == [0, 0, 1]
    (tmp_path / "pairs.csv").write_text("filepath,caption\nb.png,x\na.png,y\nb.png,z\n")
    data = load_retrieval_set(tmp_path / "pairs.csv")
    assert [p.name for p in data.paths] == ["b.png", "a.png"] and data.caption_image.tolist() == [0, 1, 0]
    (tmp_path / "bad.csv").write_text("url,label\nb.png,x\n")
    with pytest.raises(ValueError, match="needs an image column"):
        load_retrieval_set(tmp_path / "bad.csv")
    (tmp_path / "missing.csv").write_text("image,text\nnope.png,x\n")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_retrieval_set(tmp_path / "missing.csv")


def test_discover_world_and_single_sets(tmp_path):
    root = make_world(tmp_path / "world", per_class=2, train_images=4)
    layout = discover(root)
    assert sorted(layout.classification) == ["colour_shape", "colour_shape_dark", "shape"]
    assert layout.shift_groups() == {"colour_shape": ["colour_shape_dark"]}
    assert {name: spec.path for name, spec in layout.retrieval.items()} == {"retrieval": root / "eval" / "retrieval"}
    assert layout.train_source == root / "train"
    single = discover(root / "eval" / "shape")
    assert list(single.classification) == ["shape"] and not single.retrieval
    split = tmp_path / "split"
    write_task(split / "train", CLASSES[:2], 2, seed=0)
    write_task(split / "test", CLASSES[:2], 2, seed=1)
    spec = discover(split).classification["split"]
    test, train = spec.load()
    assert spec.split_dirs is not None and len(test) == 4 and len(train) == 4


def test_encode_images_batches_and_pre_projection(tmp_path):
    model, preprocess, _ = tiny_clip()
    write_task(tmp_path, CLASSES[:2], 3, seed=0)
    data = load_classification_set(tmp_path)
    features = encode_images(model, preprocess, data.paths, batch_size=4, progress=False)
    images = torch.stack([preprocess(Image.open(p)) for p in data.paths])
    with torch.no_grad():
        expected = model.encode_image(images)
        pre = model.visual.ln_post(_class_token(model, images))
    torch.testing.assert_close(features.embeddings, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features.pre_projection, pre, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features.pre_projection @ model.visual.proj, expected, atol=1e-5, rtol=1e-5)


def _class_token(model, images):
    captured = {}
    handle = model.visual.ln_post.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
    model.encode_image(images)
    handle.remove()
    return captured["x"]
