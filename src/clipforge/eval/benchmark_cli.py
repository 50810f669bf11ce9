"""`clipforge benchmark --models A,B --datasets cifar10,paper --tasks zeroshot,linear_probe,retrieval --out DIR`.

Models: names or checkpoint paths, comma-separated, or a text file with one a line. Datasets: zoo
names and collections, or folders. Results: ``DIR/results/*.json`` (CLIP_benchmark's schema, one
per cell; existing ones are kept, so re-running resumes), ``DIR/benchmark.csv``, ``benchmark.md``,
plots, and each (model, dataset)'s full report under ``DIR/runs/``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from clipforge.eval.benchmark import TASKS
from clipforge.eval.cli import add_data_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", required=True, help="comma list of model names / checkpoints, or a file with one a line")
    parser.add_argument("--datasets", required=True, help="comma list of zoo names, collections (paper, vtab, ...) or folders")
    parser.add_argument("--tasks", default="zeroshot,retrieval", help=f"comma list of {','.join(TASKS)}")
    parser.add_argument("--out", default="runs/benchmark", help="results folder (re-run to resume)")
    add_data_arguments(parser)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="image-decoding worker processes")
    parser.add_argument("--no-cache", action="store_true", help="do not cache zero-shot heads")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _list(text: str) -> list[str]:
    if os.path.isfile(text) and not text.endswith((".pt", ".safetensors", ".bin")):
        lines = Path(text).read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return [t.strip() for t in text.split(",") if t.strip()]


def run(args: argparse.Namespace) -> int:
    import clipforge
    from clipforge.eval.benchmark import run_benchmark
    from clipforge.eval.suite import EvalConfig
    from clipforge.zeroshot import default_cache_dir

    if args.batch_size < 1:
        print("clipforge benchmark: error: --batch-size must be >= 1", file=sys.stderr)
        return 2
    config = EvalConfig(batch_size=args.batch_size, num_workers=args.workers, progress=not args.quiet,
                        plots=not args.no_plots, cache_dir=None if args.no_cache else str(default_cache_dir()))

    def load(model: str):
        loaded = clipforge.load(model, device=args.device)
        if loaded[2] is None:
            raise ValueError(f"{model}: no tokenizer saved with the model and OpenAI's vocabulary is not available")
        return loaded

    try:
        result = run_benchmark(_list(args.models), _list(args.datasets), _list(args.tasks), args.out, config=config,
                               dataset_root=args.dataset_root, prompts=args.prompts, download=not args.no_download,
                               load=load)
    except (FileNotFoundError, ValueError) as err:
        print(f"clipforge benchmark: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    print(f"table: {out / 'benchmark.md'} and {out / 'benchmark.csv'}; {result['done']} cells run, "
          f"{result['skipped']} kept from before; plots: {', '.join(result['table']['plots']) or 'none'}")
    if result["errors"]:
        print(f"clipforge benchmark: {len(result['errors'])} cells failed (see {out / 'errors.json'}):", file=sys.stderr)
        for key, error in result["errors"].items():
            print(f"  {key}: {error}", file=sys.stderr)
        return 1
    return 0
