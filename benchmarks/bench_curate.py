"""Curation at scale: candidates/s per core and peak memory of ``clipforge data curate`` (local engine).

Generates a synthetic pool (captions of 4-12 words drawn from a Zipf-like vocabulary of 1M words,
unique URLs plus 1% duplicates) and a query list (the most frequent unigrams plus bigrams of
frequent words, ``--queries`` in all), then runs the curate job in a fresh process, one core, and
reads its resident high-water mark (VmHWM). Nothing is downloaded.

    python benchmarks/bench_curate.py --candidates 10000000 --queries 500000     # the issue's size (quiet machine)
    python benchmarks/bench_curate.py --candidates 200000 --queries 50000 --tag smoke

The pool is written once to ``--work`` (about 0.9 GB at 10M) and reused by later runs of the same size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent

ROWS_PER_FILE = 1_000_000
common = None  # benchmarks/common, imported by the parent only (it imports torch)


def vocabulary(n: int, seed: int = 0) -> list[str]:
    """n distinct lower-case words of 4-6 letters (numbers in base 26 from 26^3 on), in random order."""
    import numpy as np

    def word(k: int) -> str:
        out = []
        while k:
            k, r = divmod(k, 26)
            out.append(chr(97 + r))
        return "".join(out)

    words = [word(k) for k in range(26 ** 3, 26 ** 3 + n)]
    order = np.random.default_rng(seed).permutation(n)
    return [words[i] for i in order]


def generate(work: Path, candidates: int, num_queries: int, seed: int = 0) -> tuple[Path, Path]:
    """The pool (parquet files of 1M rows) and the query list; reused if already there."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    pool, queries = work / f"pool_{candidates}", work / f"queries_{num_queries}.txt"
    done = pool / "DONE"
    if done.exists() and queries.exists():
        return pool, queries
    pool.mkdir(parents=True, exist_ok=True)
    vocab = vocabulary(1_000_000, seed)
    ranks = np.arange(1, len(vocab) + 1)
    p = 1.0 / ranks ** 1.05
    p /= p.sum()
    rng = np.random.default_rng(seed + 1)
    for start in range(0, candidates, ROWS_PER_FILE):
        n = min(ROWS_PER_FILE, candidates - start)
        lengths = rng.integers(4, 13, size=n)
        ids = rng.choice(len(vocab), size=int(lengths.sum()), p=p)
        ends = np.cumsum(lengths)
        captions = [" ".join(vocab[j] for j in ids[e - k:e]) for e, k in zip(ends.tolist(), lengths.tolist())]
        rows = np.arange(start, start + n)
        dup = rng.random(n) < 0.01  # 1% repeat an earlier URL
        url_ids = np.where(dup, rng.integers(0, start + 1, size=n), rows)
        urls = [f"https://img.example.com/{u}.jpg" for u in url_ids.tolist()]
        common.log(f"pool rows {start + n}/{candidates}")
        pq.write_table(pa.table({"url": urls, "caption": captions, "n": rows}), pool / f"{start // ROWS_PER_FILE:04d}.parquet")
    n_bigrams = num_queries // 5
    bigrams = {f"{vocab[a]} {vocab[b]}" for a, b in rng.choice(2000, size=(n_bigrams * 2, 2))}
    chosen = vocab[: num_queries - n_bigrams] + sorted(bigrams)[:n_bigrams]
    queries.write_text("\n".join(chosen) + "\n")
    done.write_text("ok\n")
    return pool, queries


def worker(pool: str, queries: str, out: str, cap: int, part_rows: int) -> dict:
    """One curate run in this process (one core): wall time, rates, peak memory."""
    from clipforge.data.curate import CurateConfig, curate
    from clipforge.data.queries import load_query_texts

    t0 = time.perf_counter()
    texts = load_query_texts(queries)
    t_load = time.perf_counter() - t0
    result = curate(pool, texts, out, CurateConfig(cap=cap, part_rows=part_rows), progress=True)
    wall = time.perf_counter() - t0
    return {"candidates": result.rows_read, "queries": len(texts), "cap": cap, "kept": result.kept,
            "over_cap": result.report["queries"]["over_cap"], "seconds": round(wall, 1),
            "load_queries_s": round(t_load, 1), "candidates_per_s_per_core": round(result.rows_read / wall),
            "peak_rss_mib": round(_vm_hwm_kib() / 1024, 1)}


def _vm_hwm_kib() -> float:
    """The process's resident high-water mark (the worker does not import torch, as benchmarks/common does)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1])
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=10_000_000)
    parser.add_argument("--queries", type=int, default=500_000)
    parser.add_argument("--cap", type=int, default=20_000)
    parser.add_argument("--part-rows", type=int, default=100_000)
    parser.add_argument("--work", default="/tmp/clipforge_bench_curate")
    parser.add_argument("--tag", default="")
    parser.add_argument("--worker", nargs=3, metavar=("POOL", "QUERIES", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.cap, args.part_rows)))
        return
    sys.path.insert(0, str(BENCH_DIR))
    global common
    import common
    work = Path(args.work)
    pool, queries = generate(work, args.candidates, args.queries)
    out = work / f"out_{args.candidates}_{args.queries}_{int(time.time())}"
    env_vars = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--worker", str(pool), str(queries), str(out), "--cap", str(args.cap),
           "--part-rows", str(args.part_rows)]
    common.log(f"curate {args.candidates} candidates x {args.queries} queries -> {out}")
    proc = subprocess.run(cmd, env=env_vars, stdout=subprocess.PIPE, text=True, check=True)
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    record["part_rows"] = args.part_rows
    env = common.environment("cpu")
    name = "curate" + (f"_{args.tag}" if args.tag else "")
    notes = ["one process, one core (OMP/BLAS threads 1); peak = VmHWM of the curate process (the pool is "
             "generated beforehand in another process)", "pool: synthetic captions, Zipf-like words, 1% repeated URLs"]
    json_path, md_path = common.write_results(name, env, [record], list(record), notes)
    print(md_path.read_text())


if __name__ == "__main__":
    main()
