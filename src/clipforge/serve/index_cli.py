"""`clipforge index EMBEDDINGS --out DIR`: a vector index over `clipforge embed --images` output."""

from __future__ import annotations

import argparse
import json
import sys
import time

from clipforge.serve.embed import EmbedError
from clipforge.serve.index import IndexConfig, VectorIndexError, build_from_embeddings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("embeddings", help="directory written by `clipforge embed --images`")
    parser.add_argument("--out", required=True, help="index directory to write")
    parser.add_argument("--kind", choices=("auto", "flat", "hnsw"), default="auto",
                        help="flat: exact; hnsw: approximate; auto: flat below --exact-threshold rows")
    parser.add_argument("--exact-threshold", type=int, default=IndexConfig.exact_threshold)
    parser.add_argument("--hnsw-m", type=int, default=IndexConfig.hnsw_m)
    parser.add_argument("--ef-construction", type=int, default=IndexConfig.ef_construction)
    parser.add_argument("--ef-search", type=int, default=IndexConfig.ef_search)


def run(args: argparse.Namespace) -> int:
    config = IndexConfig(kind=args.kind, exact_threshold=args.exact_threshold, hnsw_m=args.hnsw_m,
                         ef_construction=args.ef_construction, ef_search=args.ef_search)
    start = time.perf_counter()
    try:
        index = build_from_embeddings(args.embeddings, config)
    except (EmbedError, VectorIndexError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    index.save(args.out)
    print(json.dumps({"out": args.out, "kind": index.info["kind"], "count": len(index), "dim": index.dim,
                      "seconds": round(time.perf_counter() - start, 2)}))
    return 0
