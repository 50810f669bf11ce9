"""`clipforge eval MODEL --data DIR --out RUN_DIR [--suite zeroshot,linear_probe,...]`.

MODEL is anything :func:`clipforge.load` accepts (a checkpoint file or directory, an OpenAI model
name). Writes report.json, report.md and PNG plots into RUN_DIR and prints a summary table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipforge.eval.few_shot import FewShotConfig
from clipforge.eval.linear_probe import ProbeConfig
from clipforge.eval.overlap import OverlapConfig
from clipforge.eval.suite import PROTOCOLS, EvalConfig


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="checkpoint file or directory, or an OpenAI model name")
    parser.add_argument("--data", required=True, help="data root: the synthetic world, or folders of eval sets")
    parser.add_argument("--out", default="runs/eval", help="run directory for report.json/report.md/plots")
    parser.add_argument("--suite", default=None, help=f"comma list of {','.join(PROTOCOLS)} (default: all with data)")
    parser.add_argument("--tasks", default=None, help="comma list of classification tasks (default: all found)")
    parser.add_argument("--templates", default=None,
                        help="template set (openai_imagenet, general, synthetic) or file; default: the "
                             "manifest's per task, else openai_imagenet")
    parser.add_argument("--arch", default=None, help="model config name when the checkpoint has none (GELU models)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="image-decoding worker processes")
    parser.add_argument("--few-shot-tasks", default=None,
                        help="comma list of tasks for few-shot curves (default: tasks with shifted sets, else all)")
    parser.add_argument("--shots", type=_ints, default=FewShotConfig().shots, help="few-shot k values, e.g. 1,2,4,8,16")
    parser.add_argument("--seeds", type=int, default=FewShotConfig().seeds, help="few-shot seeds per k")
    parser.add_argument("--probe-features", choices=("pre_projection", "embedding"), default="pre_projection")
    parser.add_argument("--train-source", default=None, help="training data for the overlap check (default DATA/train)")
    parser.add_argument("--overlap-images", type=int, default=OverlapConfig().max_train_images,
                        help="training images sampled for the overlap check")
    parser.add_argument("--cache-dir", default=None, help="zero-shot head cache (default: the user cache)")
    parser.add_argument("--no-cache", action="store_true", help="do not cache zero-shot heads")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    from clipforge.zeroshot import default_cache_dir

    if args.batch_size < 1 or args.seeds < 1 or args.overlap_images < 2:
        raise ValueError("--batch-size and --seeds must be >= 1 and --overlap-images >= 2")
    tasks, few = (tuple(t.strip() for t in v.split(",") if t.strip()) if v else None
                  for v in (args.tasks, args.few_shot_tasks))
    return EvalConfig(
        batch_size=args.batch_size,
        num_workers=args.workers,
        templates=args.templates,
        tasks=tasks,
        few_shot_tasks=few,
        cache_dir=None if args.no_cache else str(args.cache_dir or default_cache_dir()),
        progress=not args.quiet,
        plots=not args.no_plots,
        probe=ProbeConfig(features=args.probe_features),
        few_shot=FewShotConfig(shots=tuple(sorted(set(args.shots))), seeds=args.seeds),
        overlap=OverlapConfig(train_source=args.train_source, max_train_images=args.overlap_images),
    )


def run(args: argparse.Namespace) -> int:
    import clipforge
    from clipforge.eval.suite import run_suite

    try:
        config = config_from_args(args)
        model, preprocess, tokenizer = clipforge.load(args.model, device=args.device, model=args.arch)
        model = clipforge.optimize_for_inference(model, inplace=True)  # exact; the report names the checkpoint
        if tokenizer is None:
            raise ValueError(f"{args.model}: no tokenizer saved with the model and OpenAI's vocabulary is not available")
        out = Path(args.out)
        run_suite(model, preprocess, tokenizer, args.data, out, args.suite, config, model_name=str(args.model))
    except (FileNotFoundError, ValueError) as err:
        print(f"clipforge eval: error: {err}", file=sys.stderr)
        return 2
    print(f"report: {out / 'report.md'} (numbers in {out / 'report.json'})")
    return 0
