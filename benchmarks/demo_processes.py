"""The demo's training in one process of two threads against two processes of one thread (run.processes).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/demo_processes.py runs/demo [--steps 200] [--rounds 3]

Trains the packaged recipe for ``--steps`` on the world of a finished demo (its ``world/`` and the
tokenizer of its run), each variant in turn, round after round, so that a change in the machine's
speed (steal time on a VM) touches them alike; prints each run's samples/s (the trainer's own
figure) and the host's steal time in the round. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {  # name: overrides of the packaged recipe
    "1 process x 2 threads, 128 pairs": {"run.processes": "1", "run.threads": "2", "data.batch_size": "128"},
    "2 processes x 1 thread, 64 pairs each (the recipe)": {},
}


def steal_seconds() -> float:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def train(demo: Path, steps: int, overrides: dict[str, str], out: Path) -> float:
    sizes = json.loads((demo / "world" / "train" / "sizes.json").read_text())
    shards = "::".join(str(demo / "world" / "train" / name) for name in sorted(sizes))
    settings = {"run.steps": str(steps), "schedule.warmup_steps": "20", "eval.every": "0", "checkpoint.every": "0",
                "log.every": "50", "data.shards": shards, "tokenizer.source": str(demo / "train" / "tokenizer"),
                "run.out": str(out), **overrides}
    cmd = [sys.executable, "-m", "clipforge", "train", "--config", "configs/demo.toml"]
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value}"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(re.search(r"done: .*?, ([0-9.]+) samples/s", result.stdout).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="a finished demo's directory (runs/demo)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(1, args.rounds + 1):
            before = steal_seconds()
            for name, overrides in VARIANTS.items():
                out = Path(scratch) / "run"
                rates[name].append(train(args.demo, args.steps, overrides, out))
                shutil.rmtree(out)
            print(f"round {round_}: " + ", ".join(f"{rates[n][-1]:.1f}" for n in VARIANTS)
                  + f" samples/s; steal {steal_seconds() - before:.1f} s", flush=True)
    print(f"\n| variant | samples/s, {args.rounds} rounds of {args.steps} steps | median |")
    print("|---|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {', '.join(f'{v:.0f}' for v in values)} | {statistics.median(values):.0f} |")


if __name__ == "__main__":
    main()
