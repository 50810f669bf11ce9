"""CPU inference of two versions of clipforge, alternating fresh processes: is the new one slower?

Each round runs one process per version (order reversed every other round); each process builds the
model with the same seed, applies ``optimize_for_inference`` (which in both versions gives the
inference path that ``embed``/``serve``/``eval`` use), warms up, then times ``--calls`` calls.
Prints samples/s per version and the median (IQR) of the per-round ratios new/old.

    python benchmarks/ab_versions.py --old-src /path/to/old/checkout/src --model ViT-B/32 --batch 64 \
        --tower image --rounds 6 [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

NEW_SRC = Path(__file__).resolve().parents[1] / "src"
CHILD = r"""
import json, sys, time, torch
import clipforge
torch.manual_seed(0)
model = clipforge.create_model(sys.argv[1]).eval()
fast = clipforge.optimize_for_inference(model, inplace=True)
batch, tower, calls = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
if tower == "image":
    x = torch.randn(batch, 3, model.image_size, model.image_size)
    fn = fast.encode_image
else:
    ctx, vocab = model.config.text.context_length, model.config.text.vocab_size
    x = torch.zeros(batch, ctx, dtype=torch.long)
    x[:, 0], x[:, 1:20], x[:, 20] = vocab - 2, torch.randint(1, vocab - 2, (batch, 19)), vocab - 1
    fn = fast.encode_text
with torch.inference_mode():
    fn(x)
    times = []
    for _ in range(calls):
        start = time.perf_counter(); fn(x); times.append(time.perf_counter() - start)
print(json.dumps({"seconds": sorted(times)[len(times) // 2], "file": clipforge.__file__}))
"""


def _run(src: Path, args) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", CHILD, args.model, str(args.batch), args.tower, str(args.calls)],
                         env=env, capture_output=True, text=True, check=True).stdout
    record = json.loads(out.strip().splitlines()[-1])
    if not record["file"].startswith(str(src)):
        raise RuntimeError(f"imported {record['file']}, not the version under {src}")
    return record["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old-src", required=True, type=Path)
    p.add_argument("--model", default="ViT-B/32")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tower", choices=["image", "text"], default="image")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--out")
    args = p.parse_args()
    times = {"old": [], "new": []}
    for r in range(args.rounds):
        for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
            times[name].append(_run(args.old_src if name == "old" else NEW_SRC, args))
    ratios = sorted(o / n for o, n in zip(times["old"], times["new"]))
    q = len(ratios) // 4
    result = {"model": args.model, "tower": args.tower, "batch": args.batch, "rounds": args.rounds,
              "old_samples_per_s": args.batch / statistics.median(times["old"]),
              "new_samples_per_s": args.batch / statistics.median(times["new"]),
              "new_vs_old": [statistics.median(ratios), ratios[q], ratios[-1 - q]]}
    print(f"{args.model} encode_{args.tower} batch {args.batch}: old {result['old_samples_per_s']:.2f}, new "
          f"{result['new_samples_per_s']:.2f} samples/s; new/old {result['new_vs_old'][0]:.3f} "
          f"(IQR {result['new_vs_old'][1]:.3f}-{result['new_vs_old'][2]:.3f})")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
