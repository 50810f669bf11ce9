"""`clipforge eval MODEL (--data DIR | --dataset NAMES) --out RUN_DIR [--suite zeroshot,linear_probe,...]`.

MODEL is anything :func:`clipforge.load` accepts (a checkpoint file or directory, an OpenAI model
name). ``--data`` is a folder (the synthetic world, ImageFolder / retrieval folders, sets in
CLIP_benchmark's webdataset layout, or a folder of those); ``--dataset`` takes zoo names and
collections (``cifar10,imagenet1k,mscoco_captions``, ``paper``; `clipforge datasets` lists them),
found under ``--dataset-root`` or in the cache, downloaded from their source when missing.
Writes report.json, report.md, PNG plots and CLIP_benchmark-schema JSONs into RUN_DIR and prints
a summary table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipforge.eval.few_shot import FewShotConfig
from clipforge.eval.linear_probe import ProbeConfig
from clipforge.eval.overlap import OverlapConfig
from clipforge.eval.protocols import PROTOCOLS
from clipforge.eval.suite import EvalConfig

# Protocols that need a set's train split (fetched only when one of them is asked for).
NEEDS_TRAIN = ("linear_probe", "few_shot", "robustness")


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments naming datasets, shared with `clipforge benchmark`."""
    parser.add_argument("--dataset-root", default=None,
                        help="where named datasets live: a folder holding wds_<name>/ (or <name>/) sets, a URL, or "
                             "a template with {dataset} / {dataset_cleaned} as CLIP_benchmark's --dataset_root "
                             "(default: the cache, downloading from each set's source when missing)")
    parser.add_argument("--prompts", choices=("paper", "dataset"), default="paper",
                        help="class names and templates of named datasets: the zoo's (the paper's) or the set's own files")
    parser.add_argument("--no-download", action="store_true", help="never download a named dataset")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="checkpoint file or directory, or an OpenAI model name")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", help="data root: the synthetic world, sets in any supported format, or a folder of sets")
    where.add_argument("--dataset", help="zoo names or collections, comma-separated (`clipforge datasets` lists them)")
    parser.add_argument("--train-data", default=None,
                        help="with --data SHARDS (a tar spec such as val/{000000..000049}.tar): the training "
                             "shards for the probes")
    parser.add_argument("--classnames", default=None,
                        help="with --data SHARDS: the class names file (default: classnames.txt beside the shards)")
    add_data_arguments(parser)
    parser.add_argument("--out", default="runs/eval", help="run directory for report.json/report.md/plots")
    parser.add_argument("--suite", default=None, help=f"comma list of {','.join(PROTOCOLS)} (default: all with "
                                                      "data; with --dataset: zeroshot and retrieval)")
    parser.add_argument("--tasks", default=None, help="comma list of classification tasks (default: all found)")
    parser.add_argument("--templates", default=None,
                        help="template set (openai_imagenet, general, synthetic) or file for every task; default: "
                             "each task's own (manifest, zoo, the set's templates file), else openai_imagenet")
    parser.add_argument("--arch", default=None, help="model config name when the checkpoint has none (GELU models)")
    parser.add_argument("--pretrained", default=None,
                        help="the name of the weights in CLIP_benchmark-schema results (default: openai for OpenAI's "
                             "models, else the checkpoint path)")
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


def named_layout(names: str, args: argparse.Namespace, protocols: list[str] | None):
    """(layout, notes) for ``--dataset`` names; train splits are fetched only for the probes."""
    from clipforge.eval.named import zoo_layout

    wants_train = protocols is not None and any(p in NEEDS_TRAIN for p in protocols)
    splits = ("test", "train") if wants_train else ("test",)
    return zoo_layout(names, args.dataset_root, splits=splits, prompts=args.prompts,
                      download=not args.no_download, progress=not args.quiet)


def data_source(args: argparse.Namespace):
    """``--data``: a folder as is, a remote set (URL, ``hf://datasets/...``) mirrored into the cache,
    or shard specs (``--train-data``, ``--classnames``) as one classification task."""
    import os

    from clipforge.eval import fetch
    from clipforge.eval.layout import shard_layout

    if args.data is None:
        return None
    if fetch.is_remote(args.data):
        wants_train = args.suite is None or any(p in args.suite for p in NEEDS_TRAIN)
        splits = ("test", "train") if wants_train else ("test",)
        try:
            return fetch.mirror(args.data, splits, progress=not args.quiet)
        except fetch.FetchError:
            if splits == ("test",):
                raise
            return fetch.mirror(args.data, ("test",), progress=not args.quiet)  # a set without a train split
    if ".tar" in args.data and not os.path.isdir(args.data):
        return shard_layout(args.data, args.train_data, args.classnames)
    if args.train_data or args.classnames:
        raise ValueError("--train-data and --classnames go with --data SHARDS (a tar spec), not a folder")
    return args.data


def default_named_suite(layout) -> list[str]:
    """CLIP_benchmark's ``--task auto`` for named datasets: zero-shot classification, retrieval."""
    return [p for p, present in (("zeroshot", layout.classification), ("retrieval", layout.retrieval)) if present]


def run(args: argparse.Namespace) -> int:
    import clipforge
    from clipforge.eval.cb_results import identity
    from clipforge.eval.fetch import FetchError
    from clipforge.eval.suite import run_suite

    try:
        config = config_from_args(args)
        notes, data = {}, data_source(args)
        if args.dataset is not None:
            asked = [p.strip() for p in args.suite.split(",")] if args.suite else None
            data, notes = named_layout(args.dataset, args, asked)
        model, preprocess, tokenizer = clipforge.load(args.model, device=args.device, model=args.arch)
        model = clipforge.optimize_for_inference(model, inplace=True)  # exact; the report names the checkpoint
        if tokenizer is None:
            raise ValueError(f"{args.model}: no tokenizer saved with the model and OpenAI's vocabulary is not available")
        out = Path(args.out)
        cb_model, cb_pretrained = identity(str(args.model))
        suite = args.suite if args.suite or args.dataset is None else default_named_suite(data)
        run_suite(model, preprocess, tokenizer, data, out, suite, config, model_name=str(args.model),
                  cb_identity=(cb_model, args.pretrained or cb_pretrained), notes=notes)
    except (FileNotFoundError, ValueError, FetchError) as err:
        print(f"clipforge eval: error: {err}", file=sys.stderr)
        return 2
    print(f"report: {out / 'report.md'} (numbers in {out / 'report.json'}; CLIP_benchmark JSONs in {out / 'clip_benchmark'})")
    return 0
