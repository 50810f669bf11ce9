"""Training speed of the demo recipe for a few steps, on a world `clipforge demo` has written.

Run it under different OpenMP settings and loads to see what a busy machine costs, e.g.

    python benchmarks/demo_threads.py runs/demo --threads 2                         # default: spinning waits
    OMP_WAIT_POLICY=PASSIVE python benchmarks/demo_threads.py runs/demo --threads 2  # sleeping waits
    (python3 -c 'while True: pass' &) ; python benchmarks/demo_threads.py runs/demo   # one core busy
    OMP_WAIT_POLICY=PASSIVE python benchmarks/demo_threads.py runs/demo --nice 0    # worker at normal priority

Prints the trainer's samples/s for ``--steps`` steps (no evaluation, no checkpoints), in this one
process (the recipe's two processes of one thread against one of two: benchmarks/demo_processes.py).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from clipforge.commands.demo import recipe_path
from clipforge.train.config import load_config
from clipforge.train.loop import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", help="a `clipforge demo --out` directory (its world/ and train/tokenizer are used)")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--nice", type=int, default=None, help="data.worker_nice (default: the recipe's)")
    args = parser.parse_args()
    demo = Path(args.demo)
    shards = sorted((demo / "world" / "train").glob("*.tar"))
    with tempfile.TemporaryDirectory() as out:
        config = load_config(recipe_path(None), {
            "data.shards": f"{demo}/world/train/{{00000..{len(shards) - 1:05d}}}.tar", "run.out": out,
            "run.steps": str(args.steps), "eval.every": "0", "checkpoint.every": "0",
            "tokenizer.source": str(demo / "train" / "tokenizer"), "data.workers": str(args.workers),
            "run.processes": "1", "run.threads": str(args.threads), "data.batch_size": str(args.batch),
            **({} if args.nice is None else {"data.worker_nice": str(args.nice)})})
        start = time.perf_counter()
        summary = Trainer(config).train()
    print(f"{args.steps} steps, {args.threads} threads, {args.workers} data workers at niceness "
          f"{config.data.worker_nice}: "
          f"{summary['samples_per_second']:.0f} samples/s ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
