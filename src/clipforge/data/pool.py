"""Reading a pool of candidate pairs: parquet or CSV/TSV files in img2dataset's input layout.

A pool is one or more files (a path, a brace-expanded or ``::``-joined list, or a folder of
``*.parquet``/``*.csv``/``*.tsv``) with a ``url`` (or a local ``path``) column, a caption column and
any other columns, which are carried to the output. Files are read in fixed *parts* of
``part_rows`` rows (file by file, in the listed order), so an interrupted job resumes by part.

Every column is read as raw bytes and decoded here, so one bad row never fails a whole file:
a caption that is not UTF-8, a missing caption, an unparseable URL or a CSV row with the wrong
number of fields is reported by reason; a file that cannot be opened (a truncated parquet file
has no footer) or breaks off mid-way is reported with the rows it lost, and reading goes on with
the next file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from clipforge.data.sources import expand_urls

URL_COLUMNS = ("url", "URL", "image_url")
PATH_COLUMNS = ("path", "filepath", "image", "image_path", "file")
CAPTION_COLUMNS = ("caption", "text", "TEXT", "title", "alt")
KEY_COLUMNS = ("uid", "key", "id")
EXTS = (".parquet", ".csv", ".tsv")


@dataclass(frozen=True)
class PoolColumns:
    """Column names; None = auto-detect from the names above (url or path, one of them is needed)."""

    url: str | None = None
    path: str | None = None
    caption: str | None = None
    key: str | None = None


@dataclass
class Part:
    """Rows [start, start + len(rows)) of file ``file_index``. ``rows`` are dicts of str | None;
    ``bad`` lists (row offset, reason, detail) of rows that could not be decoded at all."""

    index: int
    file_index: int
    file: str
    start: int
    rows: list[dict]
    bad: list[tuple[int, str, str]] = field(default_factory=list)


@dataclass
class FileFailure:
    file: str
    error: str
    rows_read: int
    rows_expected: int | None


def list_pool(spec: str | list[str]) -> list[str]:
    """The pool's files in a fixed order."""
    files: list[str] = []
    for url in expand_urls(spec):
        path = Path(url)
        if path.is_dir():
            files += sorted(str(p) for p in path.iterdir() if p.suffix.lower() in EXTS)
        elif not path.is_file():
            raise FileNotFoundError(f"pool {url}: no such file or folder")
        elif path.suffix.lower() not in EXTS:
            raise ValueError(f"pool {url}: expected a .parquet, .csv or .tsv file")
        else:
            files.append(str(path))
    if not files:
        raise ValueError(f"pool {spec!r}: no .parquet/.csv/.tsv files")
    return files


def resolve_columns(header: list[str], columns: PoolColumns, file: str) -> PoolColumns:
    """Fill in auto-detected names; an error names the file and its header when one is missing."""
    def find(given: str | None, names: tuple[str, ...]) -> str | None:
        if given is not None:
            return given if given in header else None
        return next((n for n in names if n in header), None)

    url, path = find(columns.url, URL_COLUMNS), find(columns.path, PATH_COLUMNS)
    caption, key = find(columns.caption, CAPTION_COLUMNS), find(columns.key, KEY_COLUMNS)
    if columns.url and url is None or columns.path and path is None or columns.key and key is None:
        raise ValueError(f"{file}: a column given is not in the header {header}")
    if url is None and path is None:
        raise ValueError(f"{file}: no url column (looked for {URL_COLUMNS}) or path column ({PATH_COLUMNS}) "
                         f"in header {header}")
    if caption is None:
        raise ValueError(f"{file}: no caption column (looked for {columns.caption or CAPTION_COLUMNS}) in header {header}")
    return PoolColumns(url, path, caption, key)


def read_header(file: str) -> list[str]:
    if file.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        return list(pq.read_schema(file).names)
    with open(file, "rb") as f:
        line = f.readline().decode("utf-8", "replace").rstrip("\r\n")
    return line.split("\t" if file.lower().endswith(".tsv") else ",")


# The common case, checked fast: http(s)://host[:port][/path], host of letters, digits, dots, hyphens.
_PLAIN_URL = re.compile(r"https?://[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?(?:[/?#][^\s]*)?\Z")


def valid_url(url: str) -> bool:
    """http(s) with a host: what img2dataset can fetch."""
    if _PLAIN_URL.match(url):
        return True
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError for a port that is not a number
    except ValueError:  # also an unbalanced IPv6 bracket
        return False
    host = parts.hostname or ""
    return parts.scheme in ("http", "https") and bool(host) and not any(c.isspace() for c in host)


def decode_cell(value) -> tuple[str | None, bool]:
    """(text or None, whether it was valid UTF-8)."""
    if value is None:
        return None, True
    if isinstance(value, str):
        return value, True
    try:
        return bytes(value).decode("utf-8"), True
    except UnicodeDecodeError:
        return None, False


def iter_parts(files: list[str], part_rows: int, failures: list[FileFailure]) -> Iterator[Part]:
    """Parts of every file in order; broken files are appended to ``failures`` and skipped past."""
    index = 0
    for file_index, file in enumerate(files):
        reader = _parquet_batches if file.lower().endswith(".parquet") else _csv_batches
        start = 0
        try:
            for rows, bad in reader(file, part_rows):
                yield Part(index, file_index, file, start, rows, bad)
                index += 1
                start += len(rows)  # malformed CSV rows are listed by line, not numbered
        except Exception as err:  # pyarrow raises ArrowInvalid/OSError for truncated or corrupt files
            failures.append(FileFailure(file, f"{type(err).__name__}: {err}"[:300], start, _row_count(file)))


def _row_count(file: str) -> int | None:
    if not file.lower().endswith(".parquet"):
        return None
    try:
        import pyarrow.parquet as pq

        return pq.ParquetFile(file).metadata.num_rows
    except Exception:
        return None


def _parquet_batches(file: str, part_rows: int) -> Iterator[tuple[list[dict], list]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    handle = pq.ParquetFile(file)
    names = handle.schema_arrow.names
    # Strings as binary: a non-UTF-8 caption must be a bad row, not a failed file.
    schema = pa.schema([pa.field(f.name, pa.binary()) if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
                        else f for f in handle.schema_arrow])
    for batch in handle.iter_batches(batch_size=part_rows):
        batch = pa.RecordBatch.from_arrays([c.cast(schema.field(n).type) for n, c in zip(names, batch.columns)],
                                           names=names)
        yield batch.to_pylist(), []


def _csv_batches(file: str, part_rows: int) -> Iterator[tuple[list[dict], list]]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    header = read_header(file)
    bad_rows: list = []

    def invalid(row) -> str:  # wrong number of fields: count it, keep reading
        bad_rows.append((row.number, "malformed_row", f"{row.actual_columns} fields, expected {row.expected_columns}"))
        return "skip"

    reader = pcsv.open_csv(
        file, read_options=pcsv.ReadOptions(block_size=1 << 22),
        parse_options=pcsv.ParseOptions(delimiter="\t" if file.lower().endswith(".tsv") else ",",
                                        invalid_row_handler=invalid, newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(column_types={h: pa.binary() for h in header}, strings_can_be_null=False))
    pending: list[dict] = []
    for batch in reader:
        pending += batch.to_pylist()
        while len(pending) >= part_rows:
            yield pending[:part_rows], _take(bad_rows)
            pending = pending[part_rows:]
    if pending or bad_rows:
        yield pending, _take(bad_rows)


def _take(items: list) -> list:
    out = list(items)
    items.clear()
    return out


__all__ = ["FileFailure", "Part", "PoolColumns", "decode_cell", "iter_parts", "list_pool", "read_header",
           "resolve_columns", "valid_url"]
