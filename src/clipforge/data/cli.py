"""``clipforge data <synth|convert|check|queries|curate|download>``: the data pipeline's command line.

    clipforge data synth --out data/world --num-train 20000 --workers 2
    clipforge data convert --csv pairs.csv --out data/shards       (or --folder DIR)
    clipforge data check 'data/shards/{00000..00009}.tar' --report bad.json --write-sizes
    clipforge data queries | curate | download      (see clipforge.data.curate_cli)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clipforge.data import curate_cli

    sub = parser.add_subparsers(dest="data_command", metavar="<synth|convert|check|queries|curate|download>")
    sub.required = True
    p = sub.add_parser("synth", help="render the synthetic shapes world (train/val shards, eval sets)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=20_000)
    p.add_argument("--num-val", type=int, default=1_000)
    p.add_argument("--shard-size", type=int, default=1_000)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--eval-per-class", type=int, default=50)
    p.add_argument("--num-retrieval", type=int, default=500)
    p.add_argument("--format", choices=("jpg", "png"), default="jpg", help="image format in the shards")
    p.add_argument("--workers", type=int, default=2, help="processes rendering shards")

    p = sub.add_parser("convert", help="convert a CSV/TSV or a folder of captioned images into shards")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", help="CSV/TSV with an image path column and a caption column")
    src.add_argument("--folder", help="folder of images with sidecar .txt captions")
    p.add_argument("--out", required=True, help="output folder for NNNNN.tar + sizes.json")
    p.add_argument("--shard-size", type=int, default=1_000)
    p.add_argument("--image-col", help="CSV image column (default: auto, e.g. filepath)")
    p.add_argument("--caption-col", help="CSV caption column (default: auto, e.g. caption)")

    p = sub.add_parser("check", help="decode every sample and report bad ones by key and reason")
    p.add_argument("shards", help="shard spec (brace-expanded, '::'-joined), CSV file or folder")
    p.add_argument("--source", default="auto", choices=("auto", "wds", "csv", "folder"))
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--write-sizes", action="store_true", help="write sizes.json beside local shards")
    p.add_argument("--max-pixels", type=int, default=40_000_000)
    p.add_argument("--error-budget", type=float, default=0.01, help="exit 1 above this bad fraction")
    curate_cli.add_parsers(sub)


def run(args: argparse.Namespace) -> int:
    if args.data_command in ("queries", "curate", "download"):
        from clipforge.data import curate_cli

        return curate_cli.run(args)
    return {"synth": _synth, "convert": _convert, "check": _check}[args.data_command](args)


def _synth(args: argparse.Namespace) -> int:
    from clipforge.data.synthetic import WorldConfig, generate_world

    config = WorldConfig(seed=args.seed, image_size=args.image_size, num_train=args.num_train,
                         num_val=args.num_val, shard_size=args.shard_size, eval_per_class=args.eval_per_class,
                         num_retrieval=args.num_retrieval, image_format=args.format)
    manifest = generate_world(args.out, config, workers=args.workers)
    n = manifest["splits"]["train"]["num_samples"]
    print(f"wrote {n} training samples, {len(manifest['tasks'])} eval sets to {args.out} "
          f"in {manifest['seconds']:.1f} s ({n / max(manifest['seconds'], 1e-9):.0f} samples/s)")
    print(f"held-out pairs: {', '.join(' '.join(p) for p in manifest['heldout_pairs'])}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from clipforge.data.convert import ConvertConfig, convert

    columns = None
    if args.image_col or args.caption_col:
        if not (args.image_col and args.caption_col):
            print("give both --image-col and --caption-col", file=sys.stderr)
            return 2
        columns = (args.image_col, args.caption_col)
    config = ConvertConfig("csv" if args.csv else "folder", args.shard_size, columns)
    report = convert(args.csv or args.folder, args.out, config)
    print(f"converted {report.seen} samples into {args.out}; skipped {report.skipped} "
          f"({json.dumps(report.by_reason)}), see {Path(args.out) / 'convert_report.json'}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from clipforge.data.check import scan, sizes_by_folder
    from clipforge.data.convert import write_sizes
    from clipforge.data.decode import DecodeConfig

    result = scan(args.shards, args.source, DecodeConfig(max_pixels=args.max_pixels),
                  progress=lambda name: print(f"  {name}", file=sys.stderr))
    rep = result.report
    total = rep.seen + rep.skipped
    print(f"{total} samples: {rep.seen} good, {rep.skipped} bad, {len(rep.shard_errors)} broken shards")
    for reason, n in sorted(rep.by_reason.items(), key=lambda kv: -kv[1]):
        print(f"  {reason:20s} {n}")
    for err in rep.shard_errors:
        print(f"  shard {err['shard']}: {err['error']} (read {err['samples_read']})")
    if args.report:
        rep.write(args.report)
    if args.write_sizes:
        for folder, sizes in sizes_by_folder(result).items():
            if "://" in folder or folder.startswith("pipe:"):
                continue  # remote: only local folders can be written here
            write_sizes(folder or ".", sizes)
    bad = rep.skipped + len(rep.shard_errors)
    return 1 if bad > args.error_budget * max(total, 1) else 0
