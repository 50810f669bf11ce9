"""The same selection on Spark (local mode): exactly the pairs and counts of the local engine."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

pytest.importorskip("pyspark")

from clipforge.data.curate import CurateConfig, curate  # noqa: E402
from test_curate import QUERIES, _write_bad_pool, make_pool  # noqa: E402


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java 17 (Debian: openjdk-17-jre-headless)")
def test_spark_selects_exactly_what_the_local_engine_selects(tmp_path):
    from clipforge.data.curate_spark import curate_spark, spark_session

    _write_bad_pool(tmp_path / "pool")  # bad rows, a truncated parquet file, a CSV with a malformed row
    make_pool(tmp_path / "pool" / "d.parquet", 1500, seed=3)
    make_pool(tmp_path / "pool" / "e.parquet", 900, seed=4)
    config = CurateConfig(cap=40, seed=5, part_rows=400)
    local = curate(str(tmp_path / "pool"), QUERIES, tmp_path / "local", config, progress=False).report
    session = spark_session("local[2]", shuffle_partitions=2)  # small data: few shuffle tasks
    try:
        spark = curate_spark(str(tmp_path / "pool"), QUERIES, tmp_path / "spark", config, spark=session)
    finally:
        session.stop()

    def rows(folder):
        return sorted((r["uid"], r["url"], r["caption"], tuple(r["queries"]))
                      for r in pq.read_table(folder / "selected").to_pylist())

    assert rows(tmp_path / "spark") == rows(tmp_path / "local")
    assert (tmp_path / "spark" / "per_query.tsv").read_text() == (tmp_path / "local" / "per_query.tsv").read_text()
    for key in ("rows_read", "valid_rows", "duplicates", "unmatched_rows", "kept_pairs", "queries"):
        assert spark[key] == local[key], key
    assert spark["dropped"]["by_reason"] == local["dropped"]["by_reason"]
    assert len(spark["file_failures"]) == len(local["file_failures"]) == 1
    assert json.loads((tmp_path / "spark" / "report.json").read_text())["engine"] == "spark"
