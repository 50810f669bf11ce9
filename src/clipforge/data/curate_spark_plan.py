"""The Spark plan of curation: de-duplication and the per-query cap as windows, counts, the output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from clipforge.data.curate_output import write_per_query
from clipforge.data.report import DataReport


def _dedup(valid, kinds, F, Window):
    """Drop rows that are not the first (by file, row) of their hash; returns (rows, removed per reason)."""
    removed = {}
    for column, reason in kinds:
        window = Window.partitionBy(column).orderBy("file_index", "row")
        # A hash of 0 (no URL / no image) is never a duplicate: 0 in signed form is -2^63.
        ranked = valid.withColumn("_rn", F.row_number().over(window))
        keep = (F.col("_rn") == 1) | (F.col(column) == F.lit(-(1 << 63)))
        ranked = ranked.cache()
        removed[reason] = ranked.filter(~keep).count()
        valid = ranked.filter(keep).drop("_rn")
    return valid, removed


def _output_rows(kept, queries, columns, extra):
    """mapInArrow: kept rows → the output layout of the local engine (input columns, uid, queries)."""
    def convert(batches):
        import pyarrow as pa

        for batch in batches:
            out = []
            for row in batch.to_pylist():
                record = json.loads(row["extra"]) if row["extra"] else {}
                record[columns.url or columns.path] = row["link"]
                record[columns.caption] = row["caption"]
                if columns.key:
                    record[columns.key] = row["uid"]
                record["uid"] = row["uid"]
                record["queries"] = [queries[q] for q in sorted(row["queries"])]
                out.append(record)
            yield pa.RecordBatch.from_pylist(out, schema=_schema(columns, extra))
    return convert


def _schema(columns, extra):
    import pyarrow as pa

    names = [c for c in (columns.url or columns.path, columns.caption, columns.key) if c] + list(extra)
    return pa.schema([(n, pa.string()) for n in names] + [("uid", pa.string()), ("queries", pa.list_(pa.string()))])


def _ddl(columns, extra) -> str:
    names = [c for c in (columns.url or columns.path, columns.caption, columns.key) if c] + list(extra)
    return ", ".join(f"`{n}` string" for n in names) + ", uid string, queries array<string>"


def _bad_report(bad_rows) -> DataReport:
    report = DataReport()
    for row in bad_rows:
        report.add_bad(str(row["file_index"]), row["uid"] or "", row["reason"], row["detail"] or "")
    return report


def run_plan(spark, scanned, queries, config, columns, extra, out: Path, add_priority) -> dict:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    scanned = scanned.cache()
    failures = [{"file_index": r["file_index"], "error": r["detail"], "rows_read": r["row"]}
                for r in scanned.filter(F.col("reason") == "__file__").collect()]
    rows = scanned.filter(F.col("reason") != "__file__")
    bad = _bad_report(rows.filter(F.col("reason") != "").select("file_index", "uid", "reason", "detail")
                      .orderBy("file_index", "uid").collect())
    valid = rows.filter(F.col("reason") == "")
    kinds = [("uid_hash", "duplicate_key")] + [(f"{k}_hash", f"duplicate_{k}") for k in config.dedup]
    valid, removed = _dedup(valid, kinds, F, Window)
    valid = valid.cache()
    matches = valid.select("file_index", "row", "uid_hash", F.explode("queries").alias("q"))
    matches = matches.mapInArrow(add_priority, "file_index int, row long, uid_hash long, q int, prio long")
    window = Window.partitionBy("q").orderBy("prio", "file_index", "row")
    ranked = matches.withColumn("_rank", F.row_number().over(window)).cache()
    selected = ranked.filter(F.col("_rank") <= config.cap)
    kept_keys = selected.select("file_index", "row").distinct()
    kept = valid.join(kept_keys, ["file_index", "row"]).cache()
    in_output = ranked.join(kept_keys, ["file_index", "row"])
    counts = np.zeros((len(queries), 3), dtype=np.int64)
    for column, frame in enumerate((ranked, selected, in_output)):
        for r in frame.groupBy("q").count().collect():
            counts[r["q"], column] = r["count"]
    target = out / "selected"
    if target.exists():
        shutil.rmtree(target)  # Spark writes a whole job's output at once; a rerun replaces it
    out.mkdir(parents=True, exist_ok=True)
    kept.orderBy("file_index", "row").mapInArrow(_output_rows(kept, queries, columns, extra), _ddl(columns, extra)) \
        .write.parquet(str(target))
    write_per_query(out / "per_query.tsv", queries, counts)
    n_valid = valid.count() + sum(removed.values())
    return {
        "engine": "spark", "rows_read": rows.count(), "valid_rows": n_valid, "dropped": bad.to_dict(),
        "file_failures": failures, "duplicates": removed,
        "unmatched_rows": valid.filter(F.size("queries") == 0).count(), "kept_pairs": kept.count(),
        "cap": config.cap, "seed": config.seed,
        "queries": {"total": len(queries), "matched": int((counts[:, 0] > 0).sum()),
                    "over_cap": int((counts[:, 0] > config.cap).sum())},
        "per_query": "per_query.tsv",
    }
