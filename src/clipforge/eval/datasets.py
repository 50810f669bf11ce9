"""Evaluation sets on disk and the image features computed from them.

Classification sets are ImageFolder-style: ``root/<class folder>/**/<image>``. Class names (the
text put into prompts) come from ``root/classnames.json`` when present, either a list or a dict
``{folder: name}``; a list is matched to the folders by name (exactly, or with ``_`` read as a space,
ignoring case), and when the names are not folder names it is taken in sorted-folder order, the
order torchvision's ImageFolder assigns labels and CLIP_benchmark's class-name lists follow.
Without the file, folder names with ``_`` → space are the class names.

Retrieval sets are images with several captions each: ``root/captions.json``
(``{image path relative to root: [caption, ...]}``) or a CSV with an image column (``image``,
``filepath``, ``file``, ...) and a caption column (``caption``, ``text``, ...), several rows per image
allowed.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from clipforge.zeroshot import eval_mode, model_device

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
IMAGE_COLUMNS = ("image", "filepath", "image_path", "path", "file", "filename")
CAPTION_COLUMNS = ("caption", "text", "title", "txt", "description")


@dataclass(frozen=True)
class ShardMember:
    """One image stored in a local tar file: ``size`` bytes at ``offset`` (read without tarfile)."""

    shard: str
    offset: int
    size: int
    key: str

    def read(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"{self.shard}: member {self.key} is cut off ({len(data)} of {self.size} bytes)")
        return data

    def __str__(self) -> str:
        return f"{self.shard}:{self.key}"


@dataclass(frozen=True)
class ClassificationSet:
    """Images (files or shard members) with labels into ``classnames`` (prompt-ready names, label
    order): ``labels`` [N] int64, or [N, C] 0/1 for a multi-label set."""

    name: str
    root: Path
    classnames: tuple[str, ...]
    paths: tuple[Path | ShardMember, ...]
    labels: np.ndarray  # [N] int64, or [N, C] for multi-label sets
    skipped: tuple[dict, ...] = ()  # samples left out while reading the set: {"shard"/"image", "key", "reason"}

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    def subset(self, rows: np.ndarray) -> "ClassificationSet":
        """The set restricted to positions ``rows`` (e.g. the images that could be read)."""
        return replace(self, paths=tuple(self.paths[i] for i in rows), labels=self.labels[rows])


@dataclass(frozen=True)
class RetrievalSet:
    """Images and captions; ``caption_image[t]`` is the index of the image caption ``t`` describes."""

    name: str
    root: Path
    paths: tuple[Path | ShardMember, ...]
    captions: tuple[str, ...]
    caption_image: np.ndarray  # [T] int64
    skipped: tuple[dict, ...] = ()

    def subset(self, rows: np.ndarray) -> "RetrievalSet":
        """Only the images at ``rows`` and their captions (caption indices renumbered)."""
        new_index = np.full(len(self.paths), -1, dtype=np.int64)
        new_index[rows] = np.arange(len(rows))
        keep = new_index[self.caption_image] >= 0
        captions = tuple(c for c, k in zip(self.captions, keep) if k)
        return replace(self, paths=tuple(self.paths[i] for i in rows), captions=captions,
                       caption_image=new_index[self.caption_image[keep]])


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def is_classification_dir(root: Path) -> bool:
    """A folder whose subfolders hold images (what :func:`load_classification_set` reads)."""
    return root.is_dir() and any(d.is_dir() and any(is_image(p) for p in d.rglob("*")) for d in root.iterdir())


def load_classification_set(root: str | os.PathLike, name: str | None = None) -> ClassificationSet:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"classification set {root}: not a directory")
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    classnames = _classnames_for(root, folders)
    paths, labels = [], []
    for label, folder in enumerate(folders):
        files = sorted(p for p in (root / folder).rglob("*") if is_image(p))
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise ValueError(f"classification set {root}: no images in class folders ({', '.join(folders[:5]) or 'none'})")
    return ClassificationSet(name or root.name, root, tuple(classnames), tuple(paths), np.asarray(labels, dtype=np.int64))


def _norm(name: str) -> str:
    return name.replace("_", " ").strip().lower()


def _classnames_for(root: Path, folders: list[str]) -> list[str]:
    file = root / "classnames.json"
    if not file.is_file():
        return [f.replace("_", " ") for f in folders]
    try:
        names = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from err
    if isinstance(names, dict):
        missing = [f for f in folders if f not in names]
        if missing:
            raise ValueError(f"{file}: no class name for folders {missing[:5]}")
        return [str(names[f]) for f in folders]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{file}: expected a list of class names or a {{folder: name}} object")
    if len(names) != len(folders):
        raise ValueError(f"{file}: {len(names)} class names but {len(folders)} class folders in {root}")
    by_folder = {_norm(n): n for n in names}
    if len(by_folder) == len(names) and all(_norm(f) in by_folder for f in folders):
        return [by_folder[_norm(f)] for f in folders]
    return list(names)  # not folder names: label order = sorted folders, as ImageFolder assigns


def load_retrieval_set(source: str | os.PathLike, name: str | None = None) -> RetrievalSet:
    """A folder with captions.json (or a single CSV), or a CSV file."""
    source = Path(source)
    if source.is_dir():
        csvs = sorted(source.glob("*.csv")) + sorted(source.glob("*.tsv"))
        if (source / "captions.json").is_file():
            rows, root = _rows_from_json(source / "captions.json"), source
        elif len(csvs) == 1:
            rows, root = _rows_from_csv(csvs[0]), source
        else:
            raise FileNotFoundError(f"retrieval set {source}: needs captions.json or exactly one CSV file")
    elif source.is_file() and source.suffix.lower() in (".csv", ".tsv"):
        rows, root = _rows_from_csv(source), source.parent
    elif source.is_file() and source.suffix.lower() == ".json":
        rows, root = _rows_from_json(source), source.parent
    else:
        raise FileNotFoundError(f"retrieval set {source}: not a folder, CSV or captions JSON")
    return _group_rows(rows, root, name or (source.name if source.is_dir() else source.stem))


def _rows_from_json(file: Path) -> list[tuple[str, str]]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected {{image file: [captions]}}")
    rows = []
    for image, captions in data.items():
        captions = [captions] if isinstance(captions, str) else captions
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
            raise ValueError(f"{file}: image {image!r} needs a non-empty list of caption strings")
        rows += [(image, c) for c in captions]
    return rows


def _rows_from_csv(file: Path) -> list[tuple[str, str]]:
    with open(file, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t" if file.suffix.lower() == ".tsv" else ",")
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        image_col = next((c for c in IMAGE_COLUMNS if c in fields), None)
        caption_col = next((c for c in CAPTION_COLUMNS if c in fields), None)
        if image_col is None or caption_col is None:
            raise ValueError(
                f"{file}: needs an image column (one of {IMAGE_COLUMNS}) and a caption column "
                f"(one of {CAPTION_COLUMNS}); found {fields}"
            )
        original = dict(zip(fields, reader.fieldnames or []))
        return [(row[original[image_col]], row[original[caption_col]]) for row in reader]


def _group_rows(rows: list[tuple[str, str]], root: Path, name: str) -> RetrievalSet:
    order: dict[str, int] = {}
    captions, caption_image = [], []
    for image, caption in rows:
        index = order.setdefault(image, len(order))
        captions.append(caption)
        caption_image.append(index)
    if not order:
        raise ValueError(f"retrieval set {root}: no captions")
    paths = tuple((root / image) for image in order)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"retrieval set {root}: {len(missing)} images not found, e.g. {missing[0]}")
    return RetrievalSet(name, root, paths, tuple(captions), np.asarray(caption_image, dtype=np.int64))


# ---- features ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFeatures:
    """``embeddings`` [N, D]: ``encode_image`` outputs (float32, unnormalized). ``pre_projection``
    [N, W]: the ViT's class token after ``ln_post`` and before ``proj`` (the paper's linear-probe
    features, Appendix A.3); for other towers the embeddings themselves. ``thumbnails`` [N, 192]:
    the preprocessed images average-pooled to 8×8 (a pixel-level descriptor for copy detection).

    ``kept`` [N]: the input positions the rows belong to, when images were skipped (None: all
    were encoded, in order); ``skipped``: one ``{"index", "image", "reason"}`` per skipped image."""

    embeddings: torch.Tensor
    pre_projection: torch.Tensor
    thumbnails: torch.Tensor | None = None
    kept: np.ndarray | None = None
    skipped: tuple[dict, ...] = ()


def _read_image(item: Path | ShardMember | str) -> Image.Image:
    """Open and fully decode one image (a file or a member of a local tar)."""
    if isinstance(item, ShardMember):
        from clipforge.data.decode import DecodeConfig, decode_image

        return decode_image(item.read(), DecodeConfig(draft=False))  # size-checked from the header first
    with Image.open(item) as image:
        image.load()
        return image.copy() if image.mode == "RGB" else image.convert("RGB")


class _ImageFiles(Dataset):
    """Image files or shard members → ``(index, tensor)``, or ``(index, reason)`` when unreadable."""

    def __init__(self, paths: Sequence[Path | ShardMember], preprocess: Callable[[Image.Image], torch.Tensor]):
        self.paths, self.preprocess = list(paths), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | str]:
        from clipforge.data.decode import BadSample

        try:
            return index, self.preprocess(_read_image(self.paths[index]))
        except BadSample as bad:
            return index, bad.reason
        except FileNotFoundError:
            return index, "missing_image"
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
            return index, f"corrupt_image: {err}"


class _Tensors(Dataset):
    """A Dataset of preprocessed tensors, with its positions (for the shared collate)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, self.dataset[index]


def _collate(items: list[tuple[int, torch.Tensor | str]]) -> tuple[torch.Tensor, torch.Tensor | None, list]:
    """(positions of the good images [B'], their tensors [B', 3, S, S] or None, [(position, reason)])."""
    good = [(i, x) for i, x in items if isinstance(x, torch.Tensor)]
    bad = [(i, x) for i, x in items if not isinstance(x, torch.Tensor)]
    images = torch.stack([x for _, x in good]) if good else None
    return torch.tensor([i for i, _ in good], dtype=torch.long), images, bad


def _probe_module(model: Any):
    """The module whose output is the image representation before the projection (its family says),
    or None (the projected features are used)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "visual"):
        return None
    from clipforge import families

    return families.of(config.vision).probe_module(model.visual)


def encode_images(
    model: Any,
    preprocess: Callable[[Image.Image], torch.Tensor],
    images: Sequence[Path | ShardMember] | Dataset,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "images",
) -> ImageFeatures:
    """Encode image files, shard members (or a Dataset of preprocessed [3, S, S] tensors) in
    batches, with a progress bar (images/s and ETA). Unreadable images are skipped and listed in
    ``skipped``; ``kept`` then says which inputs the rows are."""
    from tqdm import tqdm

    dataset = _Tensors(images) if isinstance(images, Dataset) else _ImageFiles(images, preprocess)
    names = None if isinstance(images, Dataset) else list(images)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False, collate_fn=_collate)
    captured: list[torch.Tensor] = []
    probe = _probe_module(model)
    hook = probe.register_forward_hook(lambda m, i, out: captured.append(out.float().cpu())) if probe else None
    device, embeddings, thumbnails, kept, skipped = model_device(model), [], [], [], []
    bar = tqdm(total=len(dataset), desc=f"encode {desc}", unit="img", disable=not progress, leave=False)
    try:
        with eval_mode(model):
            for positions, batch, bad in loader:
                skipped += [{"index": i, "image": str(names[i]) if names else i, "reason": r} for i, r in bad]
                if batch is not None:
                    embeddings.append(model.encode_image(batch.to(device)).float().cpu())
                    thumbnails.append(F.adaptive_avg_pool2d(batch.float(), 8).flatten(1))  # [B, 3*8*8]
                    kept.append(positions)
                bar.update(len(positions) + len(bad))
    finally:
        bar.close()
        if hook is not None:
            hook.remove()
    if not embeddings:
        reason = f" ({len(skipped)} unreadable, e.g. {skipped[0]['image']}: {skipped[0]['reason']})" if skipped else ""
        raise ValueError(f"encode {desc}: no images{reason}")
    embeddings = torch.cat(embeddings)
    pre = torch.cat(captured) if captured else embeddings
    rows = torch.cat(kept).numpy() if skipped else None
    return ImageFeatures(embeddings, pre, torch.cat(thumbnails), rows, tuple(skipped))
