"""The same curation on Apache Spark (``--engine spark``; the ``spark`` extra; Java 17).

Beyond one machine the selection is expressed on Spark rather than a cluster of our own: the scan
(row checks, caption filters, matching) runs in Spark tasks, one per pool file, with the very
functions of the local engine; de-duplication is a window ``row_number() over (partition by hash
order by file, row)``; the cap is a window ``row_number() over (partition by query order by
priority, file, row) <= cap``, with the priorities of :mod:`clipforge.data.balance`. So both
engines select exactly the same pairs (tested in local mode). Spark retries failed tasks itself;
a killed Spark job starts over (the local engine resumes by part).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from clipforge.data.curate import CurateConfig
from clipforge.data.files import write_json
from clipforge.data.pool import list_pool, read_header, resolve_columns

_SIGN = np.uint64(1 << 63)
_MATCHERS: dict = {}  # per Python worker: queries digest -> QueryMatcher (built once, reused by tasks)


def _signed(u: np.ndarray) -> np.ndarray:
    """uint64 → int64 preserving order (Spark's long is signed)."""
    return (np.asarray(u, dtype=np.uint64) ^ _SIGN).view(np.int64)


def _scan_schema() -> str:
    """One record per pool row: where it is, its hashes (signed), its query ids, why it was dropped."""
    return ("file_index int, row long, uid string, uid_hash long, url_hash long, image_hash long, "
            "queries array<int>, reason string, detail string, caption string, link string, extra string")


def _scan_files(batches, files, columns, queries, config: CurateConfig, removals, extra):
    """mapInArrow body: file indices in → one record per pool row (checked, matched) out."""
    import pyarrow as pa

    from clipforge.data.curate_scan import LanguageFilter
    from clipforge.data.pool import FileFailure, iter_parts
    from clipforge.data.queries import QueryMatcher

    key = hash(tuple(queries))
    matcher = _MATCHERS.setdefault(key, QueryMatcher(queries))
    language = LanguageFilter(config.filters.languages, config.filters.min_lang_score) \
        if config.filters.languages else None
    for batch in batches:
        for file_index in batch.column("file_index").to_pylist():
            failures: list[FileFailure] = []
            for part in iter_parts([files[file_index]], config.part_rows, failures):
                part.file_index = file_index
                yield pa.RecordBatch.from_pylist(
                    _part_records(part, columns, matcher, config, removals, extra, len(files), language),
                    schema=_arrow_schema())
            for f in failures:
                yield pa.RecordBatch.from_pylist([{"file_index": file_index, "row": f.rows_read, "reason": "__file__",
                                                   "detail": f.error, "queries": []}], schema=_arrow_schema())


def _arrow_schema():
    import pyarrow as pa

    return pa.schema([("file_index", pa.int32()), ("row", pa.int64()), ("uid", pa.string()),
                      ("uid_hash", pa.int64()), ("url_hash", pa.int64()), ("image_hash", pa.int64()),
                      ("queries", pa.list_(pa.int32())), ("reason", pa.string()), ("detail", pa.string()),
                      ("caption", pa.string()), ("link", pa.string()), ("extra", pa.string())])


def _part_records(part, columns, matcher, config, removals, extra, n_files, language) -> list[dict]:
    from clipforge.data.curate_output import _text
    from clipforge.data.curate_scan import scan_part

    result = scan_part(part, columns, matcher, config.filters, n_files, removals, language,
                       hash_images="image" in config.dedup)
    out = [{"file_index": part.file_index, "row": -1, "reason": reason, "detail": detail, "uid": uid, "queries": []}
           for uid, reason, detail in result.bad]
    by_row: dict[int, list[int]] = {}
    for q, r in zip(result.match_query.tolist(), result.match_row.tolist()):
        by_row.setdefault(r, []).append(q)
    uid_hash, url_hash, image_hash = (_signed(getattr(result, k)) for k in ("uid_hash", "url_hash", "image_hash"))
    from clipforge.data.curate_scan import check_row, default_uid

    for i, offset in enumerate(result.row.tolist()):
        row = part.rows[offset]
        checked, _, _ = check_row(row, columns, default_uid(part, offset, n_files))
        out.append({"file_index": part.file_index, "row": part.start + offset, "uid": checked.uid,
                    "uid_hash": int(uid_hash[i]), "url_hash": int(url_hash[i]), "image_hash": int(image_hash[i]),
                    "queries": by_row.get(i, []), "reason": "", "detail": "", "caption": checked.caption,
                    "link": checked.url, "extra": json.dumps({k: _text(row.get(k)) for k in extra}, default=str)})
    return out


def _priority_udf(seed: int):
    def add_priority(batches):
        import pyarrow as pa

        from clipforge.data.balance import priorities

        for batch in batches:
            uid = batch.column("uid_hash").to_numpy().view(np.uint64) ^ _SIGN
            q = batch.column("q").to_numpy()
            prio = _signed(priorities(uid, q, seed))
            yield pa.RecordBatch.from_arrays(list(batch.columns) + [pa.array(prio)], names=batch.schema.names + ["prio"])
    return add_priority


def spark_session(master: str = "local[2]", shuffle_partitions: int = 8):
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers run this interpreter (with clipforge)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise RuntimeError("--engine spark needs pyspark (and Java 17): pip install 'clipforge[spark]'") from None
    return (SparkSession.builder.master(master).appName("clipforge-curate")
            .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", str(shuffle_partitions))
            .config("spark.sql.execution.arrow.pyspark.enabled", "true").getOrCreate())


def curate_spark(pool: str, queries: list[str], out_dir, config: CurateConfig = CurateConfig(),
                 removals: dict[str, str] | None = None, master: str = "local[2]", spark=None) -> dict:
    """Curate on Spark; writes ``selected/`` (parquet), ``report.json`` and ``per_query.tsv`` like the local engine."""
    from clipforge.data.curate_spark_plan import run_plan

    files = list_pool(pool)
    header = read_header(files[0])
    columns = resolve_columns(header, config.columns, files[0])
    used = {columns.url, columns.path, columns.caption, columns.key, "uid", "queries"}
    extra = [h for h in header if h not in used]
    own = spark is None
    spark = spark or spark_session(master)
    try:
        files_df = spark.createDataFrame([(i,) for i in range(len(files))], "file_index int").repartition(
            min(len(files), 64), "file_index")
        scanned = files_df.mapInArrow(
            lambda it: _scan_files(it, files, columns, queries, config, removals or {}, extra),
            _scan_schema())
        report = run_plan(spark, scanned, queries, config, columns, extra, Path(out_dir), _priority_udf(config.seed))
    finally:
        if own:
            spark.stop()
    report["pool"] = files
    write_json(Path(out_dir) / "report.json", report)
    return report


__all__ = ["curate_spark", "spark_session"]
