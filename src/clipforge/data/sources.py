"""Where samples come from: webdataset tar shards, CSV/TSV files, folders of images with captions.

Every source is cut into *shards* (:class:`ShardRef`) so that one scheme splits any of them across
ranks and workers:

- ``wds``: tar files in img2dataset's layout (``key.jpg|png|webp`` + ``key.txt`` + optional
  ``key.json``, members of one sample adjacent). A spec is a path or URL, brace-expanded
  (``data/{00000..00099}.tar``); several specs join with ``::``. URLs may be local paths,
  ``file://``, ``pipe:<shell command writing the tar to stdout>``, or any fsspec URL
  (``s3://``, ``gs://``, ``http://``, ``memory://``, ... where the fsspec backend is installed).
- ``csv``: a ``.csv``/``.tsv`` file with an image-path column and a caption column (relative paths
  are relative to the CSV's folder); rows are cut into virtual shards of ``rows_per_shard`` (100: small
  units, so that ranks x workers share even a small CSV evenly).
- ``folder``: images with sidecar captions (``a/b.jpg`` + ``a/b.txt``), sorted, cut the same way.

Sample counts per shard (needed to give every rank the same number of batches) come from
``sizes.json`` beside the shards (``{"00000.tar": 1000, ...}``, as written by
:mod:`clipforge.data.synthetic` and :mod:`clipforge.data.convert`), else from img2dataset's
``<shard>_stats.json`` (``successes``), else from scanning local tar headers (no image is read).

Reading yields :class:`RawSample` (undecoded bytes) and, when a shard cannot be read to its end,
one final :class:`ShardFailure`: the samples before the break are kept, the caller goes on with
the next shard.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import braceexpand

from clipforge.data.decode import IMAGE_EXTS

SOURCES = ("wds", "csv", "folder")
IMAGE_COLUMNS = ("filepath", "image", "image_path", "path", "file", "filename")
CAPTION_COLUMNS = ("caption", "title", "text", "txt", "description")


@dataclass(frozen=True)
class LocalFile:
    """A member that is read lazily from disk (csv/folder sources), so skipping it costs nothing."""

    path: str


@dataclass(frozen=True)
class ShardRef:
    """One unit of work. ``items`` holds (key, image path, caption) rows for csv/folder shards."""

    url: str
    name: str
    kind: str = "wds"
    count: int | None = None
    items: tuple = ()


@dataclass
class RawSample:
    """One sample's undecoded members: ``files`` maps lower-case extension -> bytes | LocalFile.

    ``flaw`` is a reason found while reading (``duplicate_key``, ``truncated_shard``).
    """

    key: str
    shard: str
    files: dict = field(default_factory=dict)
    flaw: str | None = None


@dataclass(frozen=True)
class ShardFailure:
    """A shard that broke off (open error, truncation, fewer samples than its count file says)."""

    shard: str
    error: str
    samples_read: int
    expected: int | None


# ---------------------------------------------------------------------------------------------
# Listing


def expand_urls(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Brace-expand a spec (``a/{000..009}.tar::b/{0..3}.tar``) or a list of specs."""
    parts = spec.split("::") if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for part in parts:
        urls.extend(braceexpand.braceexpand(part.strip()))
    return [u for u in urls if u]


def detect_source(urls: list[str]) -> str:
    """``csv`` for one .csv/.tsv file, ``folder`` for one directory, else ``wds``."""
    if len(urls) == 1 and urls[0].lower().endswith((".csv", ".tsv")):
        return "csv"
    if len(urls) == 1 and os.path.isdir(urls[0]):
        return "folder"
    return "wds"


def list_shards(
    spec: str | list[str],
    source: str = "auto",
    rows_per_shard: int = 100,
    csv_columns: tuple[str, str] | None = None,
) -> list[ShardRef]:
    """Resolve a spec into shards with sample counts where they can be known cheaply."""
    urls = expand_urls(spec)
    if not urls:
        raise ValueError(f"no shards in spec {spec!r}")
    kind = detect_source(urls) if source == "auto" else source
    if kind not in SOURCES:
        raise ValueError(f"unknown source {kind!r}; expected one of {SOURCES}")
    if kind == "csv":
        rows = read_csv_rows(urls[0], csv_columns)
    elif kind == "folder":
        rows = read_folder_rows(urls[0])
    else:
        counts = read_counts(urls)
        return [ShardRef(u, shard_name(u), "wds", counts.get(u)) for u in urls]
    chunks = [tuple(rows[i : i + rows_per_shard]) for i in range(0, len(rows), rows_per_shard)]
    return [
        ShardRef(urls[0], f"{Path(urls[0]).name}#{i * rows_per_shard}", kind, len(c), c)
        for i, c in enumerate(chunks)
    ]


def shard_name(url: str) -> str:
    """A short, stable name for reports: the last path component (of a ``pipe:`` command's last
    argument naming a tar, e.g. ``pipe:aws s3 cp s3://b/00001.tar -`` -> ``00001.tar``)."""
    if url.startswith("pipe:"):
        tars = [t for t in url[5:].split() if ".tar" in t]
        return posixpath.basename(tars[-1]) if tars else url
    return posixpath.basename(url.rstrip("/")) or url


def read_csv_rows(path: str, columns: tuple[str, str] | None) -> list[tuple[str, str, str | None]]:
    """Rows (key, absolute image path, caption) of a CSV/TSV; columns auto-detected by name."""
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    base = Path(path).resolve().parent
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = [h.strip() for h in reader.fieldnames or []]
        image_col, caption_col = columns or (_find(header, IMAGE_COLUMNS), _find(header, CAPTION_COLUMNS))
        rows = []
        for i, row in enumerate(reader):
            image = (row.get(image_col) or "").strip()
            rows.append((f"{i:09d}", str(base / image) if image else "", row.get(caption_col)))
    return rows


def _find(header: list[str], names: tuple[str, ...]) -> str:
    for name in names:
        if name in header:
            return name
    raise ValueError(f"none of the columns {names} in CSV header {header}; pass csv_columns")


def read_folder_rows(root: str) -> list[tuple[str, str, str | None]]:
    """Rows (key, image path, caption path or None) of a folder with sidecar ``.txt`` captions."""
    rows = []
    root_path = Path(root)
    for path in sorted(root_path.rglob("*")):
        if path.suffix.lower().lstrip(".") in IMAGE_EXTS and path.is_file():
            sidecar = path.with_suffix(".txt")
            key = path.relative_to(root_path).with_suffix("").as_posix()
            rows.append((key, str(path), str(sidecar) if sidecar.exists() else None))
    return rows


# ---------------------------------------------------------------------------------------------
# Counts


def read_counts(urls: list[str]) -> dict[str, int]:
    """Samples per shard URL from count files, or from scanning local tar headers."""
    counts: dict[str, int] = {}
    by_dir: dict[str, list[str]] = {}
    for url in urls:
        if not url.startswith("pipe:"):
            by_dir.setdefault(posixpath.dirname(url), []).append(url)
    for folder, members in by_dir.items():
        sizes = _read_json(posixpath.join(folder, "sizes.json"))
        for url in members:
            name = shard_name(url)
            if isinstance(sizes, dict) and name in sizes:
                counts[url] = int(sizes[name])
                continue
            stats = _read_json(posixpath.join(folder, name.split(".")[0] + "_stats.json"))
            if isinstance(stats, dict) and "successes" in stats:
                counts[url] = int(stats["successes"])
            elif _is_local(url) and os.path.isfile(_local_path(url)):
                counts[url] = count_tar_samples(_local_path(url))
    return counts


def _read_json(url: str) -> object:
    try:
        with open_stream(url) as f:
            return json.loads(f.read().decode("utf-8"))
    except Exception:  # absent or unreadable count files just mean "unknown"
        return None


def count_tar_samples(path: str) -> int:
    """Samples in a local tar, grouped as the reader groups them, from headers only (tarfile seeks
    over the data). A broken shard counts what it has; reading it later reports the error."""
    n, key, exts = 0, None, set()
    try:
        with tarfile.open(path, "r:*") as tar:
            for info, k, ext in keyed_members(tar):
                if k != key or ext in exts:
                    n, key, exts = n + 1, k, set()
                exts.add(ext)
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        pass
    return n


# ---------------------------------------------------------------------------------------------
# Reading


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:") or url.startswith("file://")


def _local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def open_stream(url: str) -> io.BufferedIOBase:
    """Open a local path, a ``pipe:`` command (webdataset's gopen) or an fsspec URL for reading."""
    if url.startswith("pipe:"):
        from webdataset.gopen import gopen  # checks the command's exit status on close

        return gopen(url, "rb")
    if _is_local(url):
        return open(_local_path(url), "rb")
    import fsspec

    return fsspec.open(url, "rb").open()


_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext rule


def split_key(name: str) -> tuple[str | None, str]:
    """``dir/key.ext.gz`` -> (``dir/key``, ``ext.gz``): the key ends at the first dot of the basename.

    The same rule as webdataset's ``base_plus_ext``, so both group members into samples alike.
    """
    match = _KEY_EXT.match(name)
    return (match.group(1), match.group(2).lower()) if match else (None, "")


def keyed_members(tar: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, str, str]]:
    """(member, sample key, extension) of a tar's regular files that have a key, in stored order."""
    for info in tar:
        if info.isreg():
            key, ext = split_key(info.name)
            if key is not None:
                yield info, key, ext


def iter_shard(ref: ShardRef) -> Iterator[RawSample | ShardFailure]:
    """Samples of one shard in stored order; a final :class:`ShardFailure` if it broke off."""
    if ref.kind == "wds":
        yield from _iter_tar(ref)
    elif ref.kind == "csv":
        for key, image, caption in ref.items:
            files = {"txt": (caption or "").encode("utf-8")} if caption is not None else {}
            if image:
                files[Path(image).suffix.lower().lstrip(".") or "jpg"] = LocalFile(image)
            yield RawSample(key, ref.name, files)
    else:
        for key, image, caption_path in ref.items:
            files: dict = {Path(image).suffix.lower().lstrip("."): LocalFile(image)}
            if caption_path is not None:
                files["txt"] = LocalFile(caption_path)
            yield RawSample(key, ref.name, files)


def _iter_tar(ref: ShardRef) -> Iterator[RawSample | ShardFailure]:
    current: RawSample | None = None
    seen: set[str] = set()  # duplicate keys are detected within a shard (img2dataset keys embed the shard id)
    n_read = 0
    try:
        stream = open_stream(ref.url)
    except Exception as exc:
        yield ShardFailure(ref.name, f"cannot open: {exc}", 0, ref.count)
        return
    error = None
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*")
        for info in tar:
            if not info.isreg():
                continue
            key, ext = split_key(info.name)
            try:
                data = tar.extractfile(info).read()
            except (tarfile.TarError, OSError, EOFError, zlib.error):
                # The member that was cut: its sample is incomplete and counts as skipped.
                if key is not None and (current is None or current.key != key):
                    if current is not None:
                        n_read += 1
                        yield current
                    current = RawSample(key, ref.name)
                if current is not None:
                    current.flaw = "truncated_shard"
                raise
            tar.members = []  # streaming: don't keep every header in memory
            if key is None:
                continue
            if current is not None and current.key == key and ext not in current.files:
                current.files[ext] = data
                continue
            if current is not None:
                n_read += 1
                yield current
            current = RawSample(key, ref.name, {ext: data}, "duplicate_key" if key in seen else None)
            seen.add(key)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            stream.close()  # a pipe: stream raises here when its command failed
        except Exception as exc:
            error = error or f"{type(exc).__name__}: {exc}"
    if current is not None:
        n_read += 1
        yield current
    if error is None and ref.count is not None and n_read < ref.count:
        error = f"ended after {n_read} of {ref.count} samples"
    if error is not None:
        yield ShardFailure(ref.name, error, n_read, ref.count)


def load_bytes(value: bytes | LocalFile | None) -> bytes | None:
    """Materialise a member: bytes stay bytes, a LocalFile is read (None when missing)."""
    if isinstance(value, LocalFile):
        try:
            with open(value.path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
    return value
