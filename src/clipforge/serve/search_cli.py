"""`clipforge search INDEX (--text QUERY | --image PATH) [-k K]`: text → image and image → image search."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clipforge.serve.index import VectorIndex, VectorIndexError
from clipforge.serve.limits import InputError, open_image


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index", help="index directory written by `clipforge index`")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", action="append", help="a text query (repeat for several)")
    query.add_argument("--image", action="append", help="an image file to find similar images to (repeatable)")
    parser.add_argument("-k", type=int, default=10, help="results per query (default %(default)s)")
    parser.add_argument("--model", help="model to embed the queries (default: the one recorded in the index)")
    parser.add_argument("--ef-search", type=int, help="HNSW recall/speed knob (default: the index's)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    from clipforge.serve.encoder import Encoder

    try:
        index = VectorIndex.load(args.index, ef_search=args.ef_search)
        model = args.model or index.info.get("model")
        if not model:
            raise ValueError(f"{args.index}: the index records no model; pass --model")
        encoder = Encoder.load(model, device=args.device)
        if encoder.dim != index.dim:
            raise ValueError(f"the model embeds into {encoder.dim} dimensions, the index holds {index.dim}")
        queries = args.text or args.image
        vectors = encoder.encode_texts(args.text) if args.text else encoder.encode_images(
            [open_image(Path(p).read_bytes(), 40_000_000, what=p) for p in args.image])
        scores, rows = index.search(vectors, args.k)
    except (VectorIndexError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except InputError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 2
    results = [{"query": q, "results": [{"rank": r + 1, "score": round(float(s), 6), "id": index.ids[row],
                                          "source": index.sources[row]}
                                         for r, (s, row) in enumerate(zip(qs, qr)) if row >= 0]}
               for q, qs, qr in zip(queries, scores, rows)]
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for entry in results:
            print(f"query: {entry['query']}")
            for hit in entry["results"]:
                print(f"  {hit['rank']:>3}  {hit['score']:+.4f}  {hit['id']}  {hit['source']}")
    return 0
