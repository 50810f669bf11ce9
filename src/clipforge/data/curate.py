"""``clipforge data curate``: a pool of web pairs → a query-balanced, de-duplicated list for img2dataset.

Three phases, streamed part by part (``part_rows`` rows) with bounded memory:

1. **scan** each part: decode and check rows, caption filters, removals (CLIP score, eval overlap),
   match queries; write compact arrays ``work/scan-NNNNN.npz`` (24 bytes per row, 8 per match).
2. **select** from the arrays alone: drop later duplicates (uid, URL, image hash; the first in pool
   order stays), then keep at most ``cap`` pairs per query by priority (:mod:`clipforge.data.balance`),
   one range of query ids at a time.
3. **write** each part's kept rows (every input column, plus ``uid`` and ``queries``) to
   ``selected/part-NNNNN.parquet``, which img2dataset reads as its url list.

Output folder::

    selected/part-NNNNN.parquet   kept rows; img2dataset --input_format parquet --url_col url --caption_col caption
    report.json                   counts: rows read, bad rows and filtered rows by reason (listed by uid),
                                  broken files, duplicates, matched / kept pairs, queries over the cap
    per_query.tsv                 query, matched (after checks and de-duplication), selected, in_output
    work/                         scan arrays and the manifest that makes a killed run resume

Every file is written to a temporary name and renamed; ``work/manifest.json`` lists finished parts,
so a run that is killed resumes where it stopped (finished scans and written parts are reused, the
selection is recomputed identically) and no pair is ever written twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clipforge.data.balance import first_occurrences, hash_bucket, priorities, select_per_query
from clipforge.data.files import atomic, read_same_job, write_json
from clipforge.data.curate_scan import CaptionFilter, LanguageFilter, scan_part
from clipforge.data.pool import FileFailure, PoolColumns, iter_parts, list_pool, read_header, resolve_columns
from clipforge.data.queries import QueryMatcher
from clipforge.data.report import DataReport

# Test hook, "PARTS:SECONDS": pause once PARTS output parts are written (a test kills the process there).
PAUSE_ENV = "CLIPFORGE_TEST_CURATE_PAUSE"
BUCKET_ITEMS = 4_000_000  # items handled at once by de-duplication and selection (~100 MB of arrays)


@dataclass(frozen=True)
class CurateConfig:
    """cap: pairs per query (the paper: 20,000). seed: fixes the sample. part_rows: rows per part (the
    unit of streaming and resumption). dedup: which duplicates to drop ('url', 'image' (local paths)).
    filters: caption checks. columns: pool column names (auto-detected when None)."""

    cap: int = 20_000
    seed: int = 0
    part_rows: int = 100_000
    dedup: tuple[str, ...] = ("url", "image")
    filters: CaptionFilter = CaptionFilter()
    columns: PoolColumns = PoolColumns()

    def __post_init__(self) -> None:
        if self.cap < 1 or self.part_rows < 1:
            raise ValueError("cap and part_rows must be >= 1")
        unknown = set(self.dedup) - {"url", "image"}
        if unknown:
            raise ValueError(f"unknown dedup kind(s) {sorted(unknown)}; choose from url, image")


@dataclass
class CurateResult:
    out_dir: Path
    rows_read: int = 0
    kept: int = 0
    report: dict = field(default_factory=dict)


class CurateError(RuntimeError):
    """The output folder holds another job's work."""


def curate(pool: str, queries: list[str], out_dir: str | os.PathLike, config: CurateConfig = CurateConfig(),
           removals: dict[str, str] | None = None, progress: bool = True,
           stop_after_parts: int | None = None) -> CurateResult:
    """Run the three phases (see the module doc); ``removals`` maps uid → reason for pairs to drop.

    ``stop_after_parts`` stops after scanning that many new parts (to test resumption).
    """
    out = Path(out_dir)
    files = list_pool(pool)
    columns = resolve_columns(read_header(files[0]), config.columns, files[0])
    matcher = QueryMatcher(queries)
    manifest = _open_manifest(out, _header(files, queries, config, removals or {}))
    failures: list[FileFailure] = []
    if not _scan(files, columns, matcher, config, removals or {}, out, manifest, failures, progress, stop_after_parts):
        return CurateResult(out)
    keep, counts, dup_report = _select(out, manifest, len(queries), config)
    _write(files, columns, matcher, out, manifest, keep, config, progress)
    report = _report(manifest, failures, dup_report, counts, queries, config, out)
    return CurateResult(out, report["rows_read"], report["kept_pairs"], report)


# ---- the manifest -------------------------------------------------------------------------------


def _header(files: list[str], queries: list[str], config: CurateConfig, removals: dict[str, str]) -> dict:
    """What makes two runs the same job: pool files (size, mtime), queries, settings, removals."""
    digest = hashlib.sha256("\n".join(queries).encode()).hexdigest()
    removal_digest = hashlib.sha256(json.dumps(sorted(removals.items())).encode()).hexdigest()
    pool = [[f, os.path.getsize(f), int(os.path.getmtime(f))] for f in files]
    return {"format": "clipforge-curate/1", "pool": pool, "queries_sha256": digest, "num_queries": len(queries),
            "config": json.loads(json.dumps(asdict(config))), "removals_sha256": removal_digest}


def _open_manifest(out: Path, header: dict) -> dict:
    path = out / "work" / "manifest.json"
    (out / "work").mkdir(parents=True, exist_ok=True)
    (out / "selected").mkdir(exist_ok=True)
    for stale in list(out.rglob("*.tmp")):  # left by a run killed mid-write
        stale.unlink()
    if path.exists():
        return read_same_job(path, header, CurateError, "use a new --out folder")
    if any((out / "selected").iterdir()):
        raise CurateError(f"{out}/selected holds files but there is no work/manifest.json; use a new --out folder")
    manifest = {**header, "scanned": {}, "written": {}}
    write_json(path, manifest)
    return manifest


# ---- phase 1: scan ------------------------------------------------------------------------------


def _scan(files, columns, matcher, config, removals, out, manifest, failures, progress, stop_after) -> bool:
    """Scan every part not scanned before; False when stopped early by ``stop_after``."""
    language = LanguageFilter(config.filters.languages, config.filters.min_lang_score) \
        if config.filters.languages else None
    bar = tqdm(desc="scan", unit="row", disable=not progress, mininterval=2.0, dynamic_ncols=True)
    new = 0
    with bar:
        for part in iter_parts(files, config.part_rows, failures):
            name = f"{part.index:05d}"
            bar.update(len(part.rows))
            if name in manifest["scanned"]:
                continue  # finished before an interruption: read, not matched again
            if stop_after is not None and new >= stop_after:
                return False
            result = scan_part(part, columns, matcher, config.filters, len(files), removals, language,
                               hash_images="image" in config.dedup)
            atomic(out / "work" / f"scan-{name}.npz", lambda f, r=result: np.savez(f, **r.arrays()))
            manifest["scanned"][name] = {"file": part.file, "start": part.start, "rows": len(part.rows) + len(part.bad),
                                         "valid": len(result.row), "unmatched": result.unmatched,
                                         "matches": len(result.match_query), "bad": result.bad[:2000],
                                         "bad_counts": _counts(r for _, r, _ in result.bad)}
            write_json(out / "work" / "manifest.json", manifest)
            new += 1
    manifest["file_failures"] = [asdict(f) for f in failures]
    return True


def _counts(reasons) -> dict[str, int]:
    out: dict[str, int] = {}
    for reason in reasons:
        out[reason] = out.get(reason, 0) + 1
    return out


def load_scan(out: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(out / "work" / f"scan-{name}.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# ---- phase 2: select ----------------------------------------------------------------------------


def _dedup(out: Path, names: list[str], config: CurateConfig) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Per part, bool [valid rows]: not a later duplicate of a uid, URL or image hash. Bucketed by hash."""
    alive = {n: np.ones(len(load_scan(out, n)["row"]), dtype=bool) for n in names}
    removed: dict[str, int] = {}
    total = sum(len(a) for a in alive.values())
    kinds = [("uid_hash", "duplicate_key")] + [(f"{k}_hash", f"duplicate_{k}") for k in config.dedup]
    buckets = max(1, -(-total // BUCKET_ITEMS))
    for column, reason in kinds:
        for bucket in range(buckets):
            hashes, position, where = [], [], []
            for p, name in enumerate(names):
                h = load_scan(out, name)[column]
                idx = np.flatnonzero((hash_bucket(h, buckets) == bucket) & alive[name])
                hashes.append(h[idx])
                position.append((np.int64(p) << 32) + idx)
                where += [(name, idx)]
            first = first_occurrences(np.concatenate(hashes), np.concatenate(position))
            start = 0
            for name, idx in where:
                dup = idx[~first[start:start + len(idx)]]
                alive[name][dup] = False
                removed[reason] = removed.get(reason, 0) + len(dup)
                start += len(idx)
    return alive, removed


def _select(out: Path, manifest: dict, num_queries: int, config: CurateConfig):
    """keep: per part bool [valid rows]; counts: per query (matched, selected, in_output) int64 [Q, 3]."""
    names = sorted(manifest["scanned"])
    alive, removed = _dedup(out, names, config)
    total = sum(manifest["scanned"][n]["matches"] for n in names)
    ranges = np.linspace(0, num_queries, max(1, -(-total // BUCKET_ITEMS)) + 1).astype(np.int64)
    keep = {n: np.zeros(len(a), dtype=bool) for n, a in alive.items()}
    counts = np.zeros((num_queries, 3), dtype=np.int64)
    for lo, hi in zip(ranges[:-1], ranges[1:]):
        queries, uid_hash, where = [], [], []
        for name in names:
            scan = load_scan(out, name)
            a, b = np.searchsorted(scan["match_query"], [lo, hi])
            rows = scan["match_row"][a:b]
            ok = alive[name][rows]
            queries.append(scan["match_query"][a:b][ok])
            uid_hash.append(scan["uid_hash"][rows[ok]])
            where.append((name, rows[ok]))
        q = np.concatenate(queries).astype(np.int64)
        chosen = select_per_query(q, priorities(np.concatenate(uid_hash), q, config.seed), config.cap)
        counts[:, 0] += np.bincount(q, minlength=num_queries)
        counts[:, 1] += np.bincount(q[chosen], minlength=num_queries)
        start = 0
        for name, rows in where:
            keep[name][rows[chosen[start:start + len(rows)]]] = True
            start += len(rows)
    for name in names:  # kept pairs containing each query (also queries that did not select them)
        scan = load_scan(out, name)
        inside = keep[name][scan["match_row"]]
        counts[:, 2] += np.bincount(scan["match_query"][inside].astype(np.int64), minlength=num_queries)
    return keep, counts, removed


# ---- phase 3: write -----------------------------------------------------------------------------


def _write(files, columns, matcher, out, manifest, keep, config, progress) -> None:
    from clipforge.data.curate_output import write_part

    bar = tqdm(desc="write", unit="row", disable=not progress, mininterval=2.0, dynamic_ncols=True)
    with bar:
        for part in iter_parts(files, config.part_rows, []):
            name = f"{part.index:05d}"
            bar.update(len(part.rows))
            if name in manifest["written"] or name not in manifest["scanned"]:
                continue
            _test_pause(len(manifest["written"]))
            n = write_part(out / "selected" / f"part-{name}.parquet", part, load_scan(out, name), keep[name],
                           columns, matcher, len(files))
            manifest["written"][name] = n
            write_json(out / "work" / "manifest.json", manifest)


def _test_pause(written: int) -> None:
    hook = os.environ.get(PAUSE_ENV)
    if hook and int(hook.partition(":")[0]) == written:
        time.sleep(float(hook.partition(":")[2]))


def _report(manifest, failures, removed, counts, queries, config, out: Path) -> dict:
    from clipforge.data.curate_output import write_per_query

    bad = DataReport()
    for name in sorted(manifest["scanned"]):
        entry = manifest["scanned"][name]
        for uid, reason, detail in entry["bad"]:
            bad.add_bad(Path(entry["file"]).name, uid, reason, detail)
        for reason, n in entry["bad_counts"].items():  # exact counts beyond the listed ones
            listed = sum(1 for _, r, _ in entry["bad"] if r == reason)
            bad.skipped += n - listed
            bad.by_reason[reason] = bad.by_reason.get(reason, 0) + n - listed
    scanned = manifest["scanned"].values()
    report = {
        "pool": [f for f, _, _ in manifest["pool"]], "rows_read": sum(e["rows"] for e in scanned),
        "valid_rows": sum(e["valid"] for e in scanned), "dropped": bad.to_dict(),
        "file_failures": manifest.get("file_failures", [asdict(f) for f in failures]),
        "duplicates": removed, "unmatched_rows": sum(e["unmatched"] for e in scanned),
        "kept_pairs": int(sum(manifest["written"].values())), "cap": config.cap, "seed": config.seed,
        "queries": {"total": len(queries), "matched": int((counts[:, 0] > 0).sum()),
                    "over_cap": int((counts[:, 0] > config.cap).sum())},
        "per_query": "per_query.tsv",
    }
    write_per_query(out / "per_query.tsv", queries, counts)
    write_json(out / "report.json", report)
    return report


def print_summary(report: dict, file=sys.stdout) -> None:
    print(f"read {report['rows_read']} rows; kept {report['kept_pairs']} pairs; "
          f"{report['queries']['matched']} of {report['queries']['total']} queries matched, "
          f"{report['queries']['over_cap']} over the cap of {report['cap']}", file=file)
    for reason, n in sorted({**report["dropped"]["by_reason"], **report["duplicates"]}.items()):
        print(f"  {reason:20s} {n}", file=file)
    for failure in report["file_failures"]:
        print(f"  broken file {failure['file']}: {failure['error']} (read {failure['rows_read']} rows)", file=file)


__all__ = ["CurateConfig", "CurateError", "CurateResult", "curate", "print_summary"]
