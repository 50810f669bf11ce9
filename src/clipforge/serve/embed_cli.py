"""`clipforge embed MODEL (--images SPEC | --texts FILE) --out DIR`: resumable batch embedding.

Run it again with the same arguments after an interruption: finished parts are kept, the rest is
computed. See :mod:`clipforge.serve.embed` for the files written. Several processes split the parts:
``torchrun --nproc-per-node 4 -m clipforge embed MODEL --images ... --out DIR`` (gloo; each rank
writes its own parts, rank 0 merges the manifest).
"""

from __future__ import annotations

import argparse
import json
import sys

from clipforge.serve.embed import EmbedConfig, EmbedError, run_embedding


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="checkpoint file or directory (clipforge's directory format carries "
                                      "its tokenizer)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", help="a folder (recursive), a .csv/.tsv with a path column, or tar shards "
                                       "(brace-expanded, e.g. data/{00000..00009}.tar)")
    what.add_argument("--texts", help="a .txt file (one text a line) or a .csv/.tsv with a text column")
    what.add_argument("--pool", help="a `clipforge data curate` pool (parquet/CSV with local image paths): ids are "
                                     "its uids, for --image-embeddings / --text-embeddings")
    parser.add_argument("--pool-kind", choices=("image", "text"), default="image", help="embed the pool's images or captions")
    parser.add_argument("--out", required=True, help="output directory (resumable)")
    parser.add_argument("--column", help="CSV column holding the image paths / texts (default: auto-detected)")
    parser.add_argument("--id-column", help="CSV column with the ids of texts (default: the row number)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default=EmbedConfig.dtype)
    parser.add_argument("--format", choices=("npy", "parquet"), default=EmbedConfig.format)
    parser.add_argument("--part-size", type=int, default=EmbedConfig.part_size, help="items per part file")
    parser.add_argument("--batch-size", type=int, default=EmbedConfig.batch_size)
    parser.add_argument("--workers", type=int, default=EmbedConfig.workers, help="image-decoding threads")
    parser.add_argument("--max-parts", type=int, help="stop after this many new parts (continue on a later run)")
    parser.add_argument("--max-pixels", type=int, default=40_000_000, help="skip images whose header claims more")
    parser.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    from clipforge.serve.embed_ranks import init_ranks
    from clipforge.serve.embed_sources import image_items, text_items
    from clipforge.serve.encoder import Encoder

    ranks = init_ranks()
    try:
        config = EmbedConfig(part_size=args.part_size, batch_size=args.batch_size, dtype=args.dtype,
                             format=args.format, workers=args.workers, max_parts=args.max_parts)
        images = bool(args.images) or bool(args.pool) and args.pool_kind == "image"
        if args.pool:
            from clipforge.data.image_filters import pool_items

            source = pool_items(args.pool, args.pool_kind, max_pixels=args.max_pixels)
        elif args.images:
            source = image_items(args.images, column=args.column, max_pixels=args.max_pixels)
        else:
            source = text_items(args.texts, column=args.column, id_column=args.id_column)
        encoder = Encoder.load(args.model, device=args.device, batch_size=args.batch_size)
        # Images are decoded and transformed in the worker threads; only the forward pass is batched here.
        encode = encoder.encode_pixels if images else encoder.encode_texts
        prepare = encoder.preprocess if images else None
        source_name = f"pool:{args.pool}" if args.pool else args.images or args.texts
        header = {"kind": "image" if images else "text", "source": source_name,
                  "model_sha256": encoder.fingerprint(), "dim": encoder.dim}
        result = run_embedding(source, encode, args.out, config, header, info={"model": encoder.name},
                               prepare=prepare, ranks=ranks)
    except (EmbedError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if ranks.world_size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    summary = {"out": str(result.out_dir), "rank": ranks.rank, "complete": result.complete, "rows": result.rows,
               "parts_written": len(result.parts_written), "parts_reused": len(result.parts_reused),
               "skipped": len(result.skipped), "shard_failures": source.failures}
    for item_id, reason in result.skipped[:20]:
        print(f"skipped {item_id}: {reason}", file=sys.stderr)
    print(json.dumps(summary))
    return 0 if result.complete else 3  # 3: stopped early by --max-parts; run again to continue
