"""What an embedding job reads: images from a folder, a CSV or webdataset shards; texts from a file.

An :class:`Item` is an id, a human-readable source (an image path, ``shard#key``, ``file:line``) and
a ``load`` callable that returns the decoded image or the text. Items come in a fixed order (sorted
folders, CSV row order, shard order), so an interrupted job can be resumed by position. Listing and
reading reuse :mod:`clipforge.data.sources`; decoding reuses :mod:`clipforge.data.decode`, with
its header-first pixel limit.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from clipforge.data.decode import IMAGE_EXTS, BadSample, DecodeConfig, decode_image, pick
from clipforge.data.sources import (
    CAPTION_COLUMNS,
    IMAGE_COLUMNS,
    LocalFile,
    RawSample,
    ShardFailure,
    expand_urls,
    list_shards,
    iter_shard,
    load_bytes,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    id: str
    source: str
    load: Callable[[], Any]  # -> PIL.Image.Image | str; raises BadSample


@dataclass
class ItemSource:
    """Items in a fixed order; ``total`` when it can be known without reading; ``failures`` of shards."""

    items: Iterator[Item]
    total: int | None
    description: str
    failures: list[str]


def image_items(spec: str, source: str = "auto", column: str | None = None,
                max_pixels: int = DecodeConfig.max_pixels) -> ItemSource:
    """Images of a folder (recursive), a CSV/TSV (``column`` or an auto-detected path column) or shards."""
    urls = expand_urls(spec)
    if not urls:
        raise ValueError(f"--images {spec!r}: nothing to read")
    if len(urls) == 1 and "://" not in urls[0] and not urls[0].startswith("pipe:") and not Path(urls[0]).exists():
        raise FileNotFoundError(f"--images {urls[0]}: no such file or folder")
    columns = _csv_columns(urls[0], column) if urls[0].lower().endswith((".csv", ".tsv")) else None
    shards = list_shards(urls, source=source, csv_columns=columns)
    counts = [s.count for s in shards]
    total = sum(counts) if all(c is not None for c in counts) else None
    decode = DecodeConfig(image_size=None, max_pixels=max_pixels)  # full decode: same pixels as queries
    failures: list[str] = []
    return ItemSource(_iter_images(shards, decode, failures), total, f"{len(shards)} shard(s) of {spec}", failures)


def _csv_columns(path: str, column: str | None) -> tuple[str, str]:
    """(image column, caption column) for clipforge.data's reader; the caption is not used here."""
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    with open(path, newline="", encoding="utf-8") as f:
        header = [h.strip() for h in next(csv.reader(f, delimiter=delimiter), [])]
    image_col = column or next((c for c in IMAGE_COLUMNS if c in header), None)
    if image_col is None or image_col not in header:
        raise ValueError(f"{path}: no image path column (looked for {column or IMAGE_COLUMNS}) in header {header}")
    caption_col = next((c for c in CAPTION_COLUMNS if c in header), image_col)
    return image_col, caption_col


def _iter_images(shards, decode: DecodeConfig, failures: list[str]) -> Iterator[Item]:
    for ref in shards:
        for sample in iter_shard(ref):
            if isinstance(sample, ShardFailure):
                failures.append(f"{sample.shard}: {sample.error}")
                log.warning("shard %s broke off after %d samples: %s", sample.shard, sample.samples_read, sample.error)
                continue
            yield _image_item(ref.url, ref.kind, sample, decode)


def _image_item(url: str, kind: str, sample: RawSample, decode: DecodeConfig) -> Item:
    ext, value = pick({k: v for k, v in sample.files.items() if k != "txt"}, IMAGE_EXTS)
    source = value.path if isinstance(value, LocalFile) else f"{url}#{sample.key}.{ext}"

    def load():
        if value is None:
            raise BadSample("missing_image", sample.key)
        data = load_bytes(value)
        if data is None:
            raise BadSample("missing_image", source)
        return decode_image(data, decode)

    return Item(sample.key, source or sample.key, load)


def text_items(path: str, column: str | None = None, id_column: str | None = None) -> ItemSource:
    """Texts of a ``.txt`` file (one per non-empty line, id = line number) or a CSV/TSV column."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--texts {path}: no such file")
    if file.suffix.lower() in (".csv", ".tsv"):
        rows = _csv_texts(file, column, id_column)
    else:
        lines = file.read_text(encoding="utf-8").splitlines()
        rows = [(str(n), f"{file.name}:{n}", line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
    items = [Item(i, src, _text_loader(text)) for i, src, text in rows]
    return ItemSource(iter(items), len(items), f"{len(items)} texts of {path}", [])


def _text_loader(text: str) -> Callable[[], str]:
    def load() -> str:
        if not text:
            raise BadSample("empty_caption")
        return text

    return load


def _csv_texts(file: Path, column: str | None, id_column: str | None) -> list[tuple[str, str, str]]:
    delimiter = "\t" if file.suffix.lower() == ".tsv" else ","
    with open(file, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        text_col = column or next((c for c in CAPTION_COLUMNS if c in header), None)
        if text_col not in header:
            raise ValueError(f"{file}: no text column (looked for {column or CAPTION_COLUMNS}) in header {header}")
        if id_column is not None and id_column not in header:
            raise ValueError(f"{file}: no id column {id_column!r} in header {header}")
        return [(row[id_column] if id_column else str(n), f"{file.name}:{n}", (row[text_col] or "").strip())
                for n, row in enumerate(reader, 1)]


__all__ = ["Item", "ItemSource", "image_items", "text_items"]
