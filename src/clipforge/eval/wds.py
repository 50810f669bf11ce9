"""CLIP_benchmark's webdataset layout, read as it is.

A set (what ``clip_benchmark_export_wds`` writes, and the ``clip-benchmark/wds_*`` repos hold)::

    root/
        classnames.txt                          one class a line, in label order
        zeroshot_classification_templates.txt   one template a line, {c} for the class name
        dataset_type.txt                        retrieval | multilabel (absent: classification)
        test/nshards.txt                        the number of shards n
        test/0.tar ... test/{n-1}.tar           samples: key.webp|png|jpg|jpeg + key.cls | .npy | .txt
        train/...                               other splits alike

A sample's label is ``.cls`` (an integer) for classification, ``.npy`` (a 0/1 vector over the
classes) for multilabel sets, and ``.txt`` (one caption a line) for retrieval. Of several image
members the first of webp, png, jpg, jpeg is used, as CLIP_benchmark's ``to_tuple`` picks.
Class names and templates are read line by line and stripped, exactly as CLIP_benchmark reads
them (a blank line inside classnames.txt is a class); blank template lines are dropped.

Shards are indexed from their tar headers (the images are not read): each image becomes a
:class:`~clipforge.eval.datasets.ShardMember` that the image pass reads by offset, so workers,
progress and skipping work as for image files. Remote sets are first mirrored into the cache
(:mod:`clipforge.eval.fetch`).

Problems name the file: a missing ``nshards.txt`` or shard, a label outside the class list, a
class list that disagrees with the labels, an unknown ``dataset_type.txt``. A sample without an
image or label, or one cut off by a truncated tar, is skipped and counted in ``problems``.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipforge.data.sources import keyed_members
from clipforge.eval.datasets import ClassificationSet, RetrievalSet, ShardMember

IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")  # CLIP_benchmark's order of preference
KINDS = ("classification", "multilabel", "retrieval")
LABEL_EXT = {"classification": "cls", "multilabel": "npy", "retrieval": "txt"}
META_FILES = ("classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt")


@dataclass(frozen=True)
class WdsInfo:
    """What a set's top-level files say: its kind, class names and templates (None: absent)."""

    root: Path
    kind: str
    classnames: tuple[str, ...] | None
    templates: tuple[str, ...] | None
    splits: tuple[str, ...]


@dataclass
class SplitIndex:
    """One split's samples: image members and labels (or captions), plus skipped samples."""

    members: list[ShardMember] = field(default_factory=list)
    labels: list = field(default_factory=list)  # int, np.ndarray [C] or list[str] per sample
    problems: list[dict] = field(default_factory=list)  # {"shard", "key", "reason"}


def is_wds_root(path: Path) -> bool:
    """A folder in the layout: a split folder with nshards.txt, or the set's files beside split folders of tars."""
    if not path.is_dir():
        return False
    subdirs = [p for p in path.iterdir() if p.is_dir()]
    if any((p / "nshards.txt").is_file() for p in subdirs):
        return True
    return any((path / f).is_file() for f in META_FILES) and any(any(p.glob("*.tar")) for p in subdirs)


def read_info(root: str | os.PathLike) -> WdsInfo:
    root = Path(root)
    kind_file = root / "dataset_type.txt"
    kind = _read_text(kind_file).strip().lower() if kind_file.is_file() else "classification"
    if kind not in KINDS:
        raise ValueError(f"{kind_file}: dataset type {kind!r} is not one of {', '.join(KINDS)}")
    names = root / "classnames.txt"
    classnames = tuple(line.strip() for line in _read_text(names).splitlines()) if names.is_file() else None
    file = root / "zeroshot_classification_templates.txt"
    templates = None
    if file.is_file():
        templates = tuple(t for t in (line.strip() for line in _read_text(file).splitlines()) if t)
        bad = [t for t in templates if "{c}" not in t and "{}" not in t]
        if bad:
            raise ValueError(f"{file}: template {bad[0]!r} has no '{{c}}' where the class name goes")
    splits = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and ((p / "nshards.txt").is_file()
                                                                            or any(p.glob("*.tar")))))
    return WdsInfo(root, kind, classnames, templates, splits)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from err


def shard_paths(root: Path, split: str) -> list[Path]:
    """``<split>/0.tar ... <split>/{n-1}.tar`` from ``<split>/nshards.txt``, every one checked to exist."""
    count_file = root / split / "nshards.txt"
    if not (root / split).is_dir():
        raise FileNotFoundError(f"{root}: no split {split!r} (found {', '.join(read_info(root).splits) or 'none'})")
    if not count_file.is_file():
        raise FileNotFoundError(f"{count_file}: missing; CLIP_benchmark's layout needs the number of shards "
                                f"there (the split's tars are 0.tar ... n-1.tar)")
    text = _read_text(count_file).strip()
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"{count_file}: expected the number of shards, found {text[:40]!r}") from None
    if count < 1:
        raise ValueError(f"{count_file}: {count} shards")
    shards = [root / split / f"{i}.tar" for i in range(count)]
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{root / split}: shard {missing[0]} is missing ({len(missing)} of the "
                                f"{count} that nshards.txt lists: {', '.join(missing[:5])})")
    return shards


def scan_split(root: str | os.PathLike, split: str, kind: str) -> SplitIndex:
    """Index every sample of a split in stored order from the tars' headers."""
    index = SplitIndex()
    for shard in shard_paths(Path(root), split):
        _scan_shard(shard, LABEL_EXT[kind], index)
    return index


def _scan_shard(shard: Path, label_ext: str, index: SplitIndex) -> None:
    size = shard.stat().st_size
    key, members = None, {}
    try:
        with tarfile.open(shard, "r:") as tar:  # seekable: headers are read, image data skipped
            for info, k, ext in keyed_members(tar):
                if info.offset_data + info.size > size:
                    index.problems.append({"shard": str(shard), "key": k, "reason": "truncated_shard"})
                    key, members = None, {}
                    break
                if k != key or ext in members:
                    _add_sample(shard, key, members, label_ext, index)
                    key, members = k, {}
                small = ext == label_ext
                members[ext] = tar.extractfile(info).read() if small else (info.offset_data, info.size)
    except (tarfile.TarError, OSError, EOFError) as err:
        index.problems.append({"shard": str(shard), "key": key, "reason": f"truncated_shard: {err}"})
        key, members = None, {}
    _add_sample(shard, key, members, label_ext, index)


def _add_sample(shard: Path, key: str | None, members: dict, label_ext: str, index: SplitIndex) -> None:
    if key is None:
        return
    image = next((e for e in IMAGE_EXTS if e in members), None)
    problem = "missing_image" if image is None else None if label_ext in members else f"missing_{label_ext}"
    if problem is not None:
        index.problems.append({"shard": str(shard), "key": key, "reason": problem})
        return
    try:
        label = _parse_label(members[label_ext], label_ext)
    except ValueError as err:
        raise ValueError(f"{shard}: sample {key}: {err}") from None
    offset, size = members[image]
    index.members.append(ShardMember(str(shard), offset, size, key))
    index.labels.append(label)


def _parse_label(data: bytes, ext: str):
    if ext == "cls":
        text = data.decode("utf-8", "replace").strip()
        try:
            return int(text)
        except ValueError:
            raise ValueError(f".cls holds {text[:20]!r}, not an integer label") from None
    if ext == "npy":
        try:
            vector = np.load(io.BytesIO(data), allow_pickle=False)  # never unpickle data
        except (ValueError, OSError) as err:
            raise ValueError(f".npy is not a numeric array ({err})") from None
        if vector.ndim != 1:
            raise ValueError(f".npy label has shape {vector.shape}, expected one value per class")
        return vector
    return data.decode("utf-8", "replace").splitlines()  # CLIP_benchmark: str.splitlines


def load_classification(root: str | os.PathLike, split: str, name: str, classnames: tuple[str, ...] | None = None,
                        info: WdsInfo | None = None) -> ClassificationSet:
    """A classification or multilabel split as a :class:`ClassificationSet` (``skipped``: samples left out).

    ``classnames`` (e.g. the zoo's) replaces the set's own list; either must cover the labels.
    """
    info = info or read_info(root)
    if info.kind == "retrieval":
        raise ValueError(f"{info.root}: dataset_type.txt says retrieval, not a classification set")
    names = classnames if classnames is not None else info.classnames
    if names is None:
        raise FileNotFoundError(f"{info.root / 'classnames.txt'}: missing; a classification set needs its class "
                                "names (one a line, in label order)")
    index = scan_split(info.root, split, info.kind)
    if not index.members:
        raise ValueError(f"{info.root / split}: no usable samples ({_problem_summary(index.problems)})")
    where = "the zoo's class list" if classnames is not None else info.root / "classnames.txt"
    labels = _check_labels(index, len(names), info.kind, where, info.root / split)
    return ClassificationSet(name, info.root, tuple(names), tuple(index.members), labels, tuple(index.problems))


def load_shards(urls: list[str], name: str, classnames: tuple[str, ...], where: str) -> ClassificationSet:
    """Classification shards outside CLIP_benchmark's layout (ImageNet-style ``key.jpg`` + ``key.cls``
    tars, local), given as a list of files; ``where`` names the class-name source in messages."""
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(f"shard {missing[0]} is missing ({len(missing)} of {len(urls)} in the spec)")
    index = SplitIndex()
    for url in urls:
        _scan_shard(Path(url), "cls", index)
    if not index.members:
        raise ValueError(f"{urls[0]} ...: no usable samples ({_problem_summary(index.problems)})")
    labels = _check_labels(index, len(classnames), "classification", where, Path(urls[0]).parent)
    return ClassificationSet(name, Path(urls[0]).parent, tuple(classnames), tuple(index.members), labels,
                             tuple(index.problems))


def _check_labels(index: SplitIndex, num_classes: int, kind: str, where, folder: Path) -> np.ndarray:
    if kind == "multilabel":
        lengths = {len(v) for v in index.labels}
        if lengths != {num_classes}:
            raise ValueError(f"{folder}: .npy labels have {sorted(lengths)} entries but {where} "
                             f"has {num_classes} classes")
        return np.stack(index.labels).astype(np.float32)
    labels = np.asarray(index.labels, dtype=np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        member = index.members[bad[0]]
        raise ValueError(f"{member.shard}: sample {member.key} has label {labels[bad[0]]}, outside the "
                         f"{num_classes} classes of {where} ({len(bad)} such samples)")
    return labels


def load_retrieval(root: str | os.PathLike, split: str, name: str,
                   info: WdsInfo | None = None) -> RetrievalSet:
    """A retrieval split: every image with the captions of its ``.txt`` (one a line)."""
    info = info or read_info(root)
    if info.kind != "retrieval":
        raise ValueError(f"{info.root}: a {info.kind} set, not retrieval (dataset_type.txt)")
    index = scan_split(info.root, split, info.kind)
    captions, caption_image = [], []
    for image, lines in enumerate(index.labels):
        captions += lines
        caption_image += [image] * len(lines)
    if not captions:
        raise ValueError(f"{info.root / split}: no captions ({_problem_summary(index.problems)})")
    members = tuple(index.members)
    return RetrievalSet(name, info.root, members, tuple(captions), np.asarray(caption_image, dtype=np.int64),
                        tuple(index.problems))


def _problem_summary(problems: list[dict]) -> str:
    if not problems:
        return "the shards hold no samples"
    reasons: dict[str, int] = {}
    for p in problems:
        reasons[p["reason"].split(":")[0]] = reasons.get(p["reason"].split(":")[0], 0) + 1
    return ", ".join(f"{n} {r}" for r, n in reasons.items()) + f", e.g. {problems[0]['shard']}"
