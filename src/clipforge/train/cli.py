"""``clipforge train``: a recipe plus checked overrides. Several processes: ``torchrun ... -m clipforge train``.

Every config key is also an option (``--optim.lr 1e-3``, ``--model.vision.width 64``), hidden from
``--help`` to keep it short; ``--set optim.lr=1e-3`` is the same. An unknown key is an error naming it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing

from clipforge.config import TextConfig, VisionConfig
from clipforge.train.config import ConfigError, TrainConfig, load_config, parse_overrides

_PREFIX = "override:"


def config_keys(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the training config (``optim.lr``, ``model.vision.width``, ``data.decode.max_pixels``)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            keys += config_keys(hints[f.name], f"{name}.")
        elif name in ("model.vision", "model.text"):
            part = VisionConfig if f.name == "vision" else TextConfig
            keys += [f"{name}.{g.name}" for g in dataclasses.fields(part)]
        elif prefix:
            keys.append(name)
    return keys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.allow_abbrev = False  # --optim.l must not silently mean --optim.lr
    parser.add_argument("--config", metavar="RECIPE", help="a TOML or JSON recipe (e.g. configs/demo.toml)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="override a config key, e.g. --set optim.lr=1e-3 (also: --optim.lr 1e-3)")
    parser.add_argument("--out", metavar="DIR", help="the run directory (run.out): train_config.json, metrics.jsonl, "
                        "data_report.json (bad samples), tokenizer/, checkpoints/, final/")
    parser.add_argument("--resume", metavar="latest|DIR", help="continue from the newest complete checkpoint or DIR")
    parser.add_argument("--stop-at", type=int, metavar="STEP", help="stop after STEP (checkpointed), to resume later")
    parser.add_argument("--runlocal", action="store_true", help="a few steps of the recipe on a CPU, small towers")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    for key in config_keys():
        parser.add_argument(f"--{key}", dest=f"{_PREFIX}{key}", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def overrides_from(args: argparse.Namespace) -> dict[str, str]:
    overrides = parse_overrides(args.set)
    overrides.update({k[len(_PREFIX):]: v for k, v in vars(args).items() if k.startswith(_PREFIX)})
    if args.out:
        overrides["run.out"] = args.out
    if args.resume:
        overrides["checkpoint.resume"] = args.resume
    return overrides


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, overrides_from(args), runlocal=args.runlocal)
    except (ConfigError, FileNotFoundError) as err:
        print(f"clipforge train: error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    summary = _train(config, args.stop_at)
    if isinstance(summary, int):
        return summary
    if os.environ.get("RANK", "0") == "0":
        print(f"done: step {summary['step']}, loss {summary['loss']}, {summary['samples_per_second']:.1f} samples/s, "
              f"{summary['seconds']:.1f} s")
    return 0


def _train(config: TrainConfig, stop_at: int | None) -> dict | int:
    """Rank 0's summary, or the exit code: run.processes > 1 starts that many processes here (each
    reports its own error), else this process trains alone or as one of torchrun's."""
    from clipforge.train import launch

    try:
        if not launch.launches(config):
            return launch.train_here(config, stop_at)
        return launch.launch(config, stop_at)
    except launch.LaunchError as err:
        print(f"clipforge train: error: {err}", file=sys.stderr)
        return err.exit_code
    except launch.ProcessesError as err:
        print(f"clipforge train: error: {err}", file=sys.stderr)
        return 2
