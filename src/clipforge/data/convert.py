"""Writing webdataset shards, and converting a CSV/TSV or a folder of captioned images into them.

Output layout (what :mod:`clipforge.data.sources` reads and img2dataset writes)::

    out/00000.tar   key.jpg|png|webp (original bytes, never re-encoded), key.txt, key.json
    out/sizes.json  {"00000.tar": 1000, ...}
    out/convert_report.json   rows that could not be converted, by key with the reason

Tar members get a fixed mtime/owner so that the same input always gives byte-identical shards.
Images are copied as they are: checking them is ``clipforge data check``'s job, and the loader
skips bad ones at training time with a report.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from clipforge.data.report import DataReport
from clipforge.data.sources import LocalFile, list_shards, load_bytes


def write_shard(path: str | os.PathLike, samples: Iterable[dict]) -> int:
    """Write samples ``{"__key__": str, ext: bytes | str, ...}`` to a tar atomically; returns the count."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            key = sample["__key__"]
            for ext in sorted(k for k in sample if not k.startswith("__")):
                data = sample[ext]
                data = data.encode("utf-8") if isinstance(data, str) else data
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o444
                info.uname = info.gname = "clipforge"
                tar.addfile(info, io.BytesIO(data))
            n += 1
    os.replace(tmp, path)
    return n


def write_sizes(folder: str | os.PathLike, sizes: dict[str, int]) -> None:
    """The count file beside the shards: ``{shard file name: samples}``."""
    Path(folder, "sizes.json").write_text(json.dumps(dict(sorted(sizes.items())), indent=1))


@dataclass(frozen=True)
class ConvertConfig:
    """source: ``csv`` or ``folder``; csv_columns: (image, caption) names, auto-detected if None."""

    source: str = "csv"
    shard_size: int = 1000
    csv_columns: tuple[str, str] | None = None


def _samples(refs: list, report: DataReport) -> Iterator[dict]:
    for ref in refs:
        for key, image, caption in ref.items:
            data = load_bytes(LocalFile(image)) if image else None
            if data is None:
                report.add_bad(ref.name, key, "missing_image", image)
                continue
            if isinstance(caption, str) and ref.kind == "folder":
                caption = load_bytes(LocalFile(caption))
            elif isinstance(caption, str):
                caption = caption.encode("utf-8")
            if not caption or not caption.strip():
                report.add_bad(ref.name, key, "missing_caption" if caption is None else "empty_caption")
                continue
            report.seen += 1
            ext = Path(image).suffix.lower().lstrip(".") or "jpg"
            ext = "jpg" if ext == "jpeg" else ext
            yield {"__key__": key.replace("/", "_"), ext: data, "txt": caption,
                   "json": json.dumps({"source": image})}


def convert(spec: str, out_dir: str | os.PathLike, config: ConvertConfig = ConvertConfig()) -> DataReport:
    """Convert a CSV/TSV or a folder into shards in ``out_dir``; returns what was skipped."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    refs = list_shards(spec, config.source, rows_per_shard=config.shard_size, csv_columns=config.csv_columns)
    report = DataReport()
    stream = _samples(refs, report)
    sizes: dict[str, int] = {}
    while True:
        name = f"{len(sizes):05d}.tar"
        chunk = _take(stream, config.shard_size)
        if not chunk:
            break
        sizes[name] = write_shard(out / name, chunk)
    write_sizes(out, sizes)
    report.write(out / "convert_report.json")
    return report


def _take(it: Iterator[dict], n: int) -> list[dict]:
    out = []
    for item in it:
        out.append(item)
        if len(out) == n:
            break
    return out
