"""Search for the demo recipe: train one variant for a fixed number of steps, score it, record its cost.

Cost is CPU time (user + sys of this process and its children: the data worker, the world's
renderers), which another job on the machine changes far less than wall-clock time. Accuracy is
deterministic for a fixed step count and seed, so variants can be explored on a busy machine.

    python benchmarks/demo_recipe.py --tag base                                  # the packaged recipe
    python benchmarks/demo_recipe.py --tag lr2e-3 --set optim.lr=2e-3 --seed 1   # a change, another seed
    python benchmarks/demo_recipe.py --tag small --world num_train=10000 --set model.vision.width=24

Each run appends one JSON line to ``--results`` (config, steps, zero-shot accuracies, CPU seconds
per phase, samples per CPU-second, load average); ``--table`` prints that file as a markdown table.
Worlds are cached by config under ``--work`` (their generation cost is recorded the first time).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

TASKS = ("heldout", "shape", "colour", "count")


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Meter:
    """CPU and wall seconds of a block: ``with Meter() as m: ...; m.cpu, m.wall``."""

    def __enter__(self):
        self._cpu, self._wall = cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu, self.wall = cpu_seconds() - self._cpu, time.perf_counter() - self._wall


def world(work: Path, overrides: list[str]) -> tuple[Path, dict, dict]:
    """(world directory, manifest, generation cost or {} when cached)."""
    from clipforge.commands.demo import make_world, split_overrides, world_config

    config = world_config(split_overrides([f"world.{item}" for item in overrides])[0])
    key = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:10]
    out = work / "worlds" / key
    cost = {}
    if not (out / "manifest.json").is_file():
        with Meter() as meter:
            make_world(out, config, workers=2)
        cost = {"world_cpu": round(meter.cpu, 1), "world_wall": round(meter.wall, 1)}
    return out, json.loads((out / "manifest.json").read_text()), cost


def train(run_dir: Path, world_dir: Path, manifest: dict, recipe: str | None, items: list[str], seed: int):
    from clipforge.commands.demo import recipe_path, training_overrides
    from clipforge.commands.demo import train as train_as_the_demo
    from clipforge.train.config import load_config, parse_overrides

    overrides = {**training_overrides(run_dir.parent, world_dir, manifest), "run.out": str(run_dir),
                 "checkpoint.resume": "none", "run.seed": str(seed), "data.seed": str(seed), **parse_overrides(items)}
    config = load_config(recipe_path(recipe), overrides)
    shutil.rmtree(run_dir, ignore_errors=True)
    with Meter() as meter:  # in the recipe's run.processes processes (their CPU time counted once reaped)
        summary = train_as_the_demo(config)
    return config, summary, meter


def score(model_dir: Path, world_dir: Path, tasks: tuple[str, ...]) -> tuple[dict, Meter]:
    import clipforge
    from clipforge.eval import EvalConfig, run_suite

    with Meter() as meter:
        model, preprocess, tokenizer = clipforge.load(model_dir)
        report = run_suite(model, preprocess, tokenizer, world_dir, model_dir.parent / "score", "zeroshot",
                           EvalConfig(tasks=tasks, progress=False, plots=False), echo=None)
    return {t: round(report["zeroshot"][t]["acc1"], 4) for t in tasks}, meter


def run(args: argparse.Namespace) -> dict:
    import torch

    work = Path(args.work)
    world_dir, manifest, world_cost = world(work, [f"seed={args.seed}", *args.world])
    run_dir = work / "runs" / f"{args.tag}_s{args.seed}"
    config, summary, meter = train(run_dir, world_dir, manifest, args.config, args.set, args.seed)
    accuracy, eval_meter = score(run_dir / "final", world_dir, TASKS)
    samples = summary["step"] * config.data.batch_size * config.run.processes
    row = {
        "tag": args.tag, "seed": args.seed, "world": args.world, "set": args.set, "steps": summary["step"],
        "batch": config.data.batch_size * config.run.processes, "samples": samples, **accuracy,
        "train_cpu": round(meter.cpu, 1), "train_wall": round(meter.wall, 1),
        "samples_per_cpu_s": round(samples / meter.cpu, 1), "zeroshot_cpu": round(eval_meter.cpu, 1),
        **world_cost, "threads": config.run.threads, "processes": config.run.processes, "loadavg": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    with open(args.results, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    return row


COLUMNS = ("tag", "seed", "steps", "batch", "heldout", "shape", "colour", "count", "train_cpu",
           "samples_per_cpu_s", "zeroshot_cpu", "world_cpu", "world", "set")


def table(path: str) -> str:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = []
        for column in COLUMNS:
            value = row.get(column, "")
            if column in ("heldout", "shape", "colour", "count") and value != "":
                value = f"{100 * value:.1f}"
            elif isinstance(value, list):
                value = " ".join(f"`{v}`" for v in value) or "–"
            cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", help="a name for the variant")
    parser.add_argument("--seed", type=int, default=0, help="world.seed, run.seed and data.seed (as clipforge demo --seed)")
    parser.add_argument("--config", help="a recipe instead of the packaged demo.toml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe override")
    parser.add_argument("--world", action="append", default=[], metavar="KEY=VALUE", help="a world override")
    parser.add_argument("--work", default="runs/demo_recipe", help="worlds and runs (default runs/demo_recipe)")
    parser.add_argument("--results", default="benchmarks/results/demo_recipe_variants.jsonl")
    parser.add_argument("--table", action="store_true", help="print --results as a markdown table and exit")
    args = parser.parse_args()
    if args.table:
        print(table(args.results))
        return
    if not args.tag:
        parser.error("--tag is required")
    run(args)


if __name__ == "__main__":
    main()
