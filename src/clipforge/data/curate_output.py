"""The files curation writes: the selected rows as parquet (img2dataset's url list) and per-query counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clipforge.data.curate_scan import check_row, default_uid
from clipforge.data.files import atomic
from clipforge.data.pool import Part, PoolColumns, decode_cell
from clipforge.data.queries import QueryMatcher


def _text(value):
    """Input cells as text where they are UTF-8 (binary otherwise), so the output reads like the input."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        text, ok = decode_cell(value)
        return text if ok else bytes(value)
    return value


def kept_queries(scan: dict, keep: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
    """(row offsets of the kept rows, the query ids each contains) from a part's scan arrays."""
    kept = np.flatnonzero(keep)
    inside = keep[scan["match_row"]]
    rows, queries = scan["match_row"][inside], scan["match_query"][inside]
    order = np.argsort(rows, kind="stable")
    rows, queries = rows[order], queries[order]
    bounds = np.searchsorted(rows, kept)
    ends = np.searchsorted(rows, kept, side="right")
    return scan["row"][kept], [queries[a:b].tolist() for a, b in zip(bounds.tolist(), ends.tolist())]


def write_part(path: Path, part: Part, scan: dict, keep: np.ndarray, columns: PoolColumns,
               matcher: QueryMatcher, n_files: int) -> int:
    """Write the kept rows of ``part`` with ``uid`` and ``queries``; returns the count.

    A part with no kept row writes no file (img2dataset would fail on an empty one).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, found = kept_queries(scan, keep)
    if len(rows) == 0:
        return 0
    records = []
    for offset, ids in zip(rows.tolist(), found):
        row = part.rows[offset]
        checked, reason, _ = check_row(row, columns, default_uid(part, offset, n_files))
        assert checked is not None, reason  # the scan passed it; the pool changed otherwise (checked by size/mtime)
        record = {k: _text(v) for k, v in row.items() if k not in ("uid", "queries")}
        record["uid"] = checked.uid
        record["queries"] = [matcher.queries[q] for q in ids]
        records.append(record)
    table = pa.Table.from_pylist(records)
    atomic(path, lambda f: pq.write_table(table, f))
    return len(records)


def write_per_query(path: Path, queries: list[str], counts: np.ndarray) -> None:
    """``query  matched  selected  in_output`` for every query, in list order."""
    lines = ["query\tmatched\tselected\tin_output\n"]
    lines += [f"{q}\t{m}\t{s}\t{o}\n" for q, (m, s, o) in zip(queries, counts.tolist())]
    atomic(path, lambda f: f.write("".join(lines).encode("utf-8")))


def read_per_query(path: str | Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    with open(path, encoding="utf-8") as f:
        next(f)
        for line in f:
            q, m, s, o = line.rstrip("\n").split("\t")
            out[q] = (int(m), int(s), int(o))
    return out


__all__ = ["read_per_query", "write_part", "write_per_query"]
