"""In-process A/B of CPU inference: pieces on concurrent streams vs one after another, beside open_clip.

One process, the same inputs, calls alternating open_clip / serial / streams (then reversed) for
``--rounds`` rounds, so that this VM's minute-to-minute drift hits all three alike; prints the
median and inter-quartile range of the per-call ratios. Needs open_clip beside clipforge (see
benchmarks/README.md):

    /work/ocvenv/bin/python benchmarks/ab_streams.py --model ViT-B/32 --batch 64 --rounds 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B/32")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--tower", choices=["image", "text"], default="image")
    args = p.parse_args()

    import open_clip

    from clipforge import create_model

    torch.manual_seed(0)
    ours = create_model(args.model).eval()
    peer = open_clip.create_model(args.model.replace("/", "-") + "-quickgelu").eval()
    if args.tower == "image":
        size = ours.visual.image_size
        x = torch.randn(args.batch, 3, size, size)
        tower, ours_fn, peer_fn = ours.visual, ours.encode_image, peer.encode_image
    else:
        x = torch.zeros(args.batch, 77, dtype=torch.long)
        x[:, 0], x[:, 1:20], x[:, 20] = 49406, torch.randint(1, 49000, (args.batch, 19)), 49407
        tower, ours_fn, peer_fn = ours, ours.encode_text, peer.encode_text

    def timed(fn, streams: int | None = None) -> float:
        tower.inference_streams = streams
        start = time.perf_counter()
        fn(x)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"open_clip": [], "serial": [], "streams": []}
    runs = {"open_clip": lambda: timed(peer_fn), "serial": lambda: timed(ours_fn, 1),
            "streams": lambda: timed(ours_fn, None)}
    with torch.inference_mode():
        for run in runs.values():  # warm-up
            run()
        for r in range(args.rounds):
            for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                times[name].append(runs[name]())
    print(f"{args.model} encode_{args.tower}, batch {args.batch}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    for name, ts in times.items():
        print(f"  {name:10s} {args.batch / statistics.median(ts):8.2f} samples/s")
    for slow, fast in (("open_clip", "serial"), ("open_clip", "streams"), ("serial", "streams")):
        ratios = sorted(a / b for a, b in zip(times[slow], times[fast]))
        q = len(ratios) // 4
        print(f"  {fast} vs {slow}: {statistics.median(ratios):.3f} (IQR {ratios[q]:.3f}–{ratios[-1 - q]:.3f})")


if __name__ == "__main__":
    main()
