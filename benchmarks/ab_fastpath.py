"""In-process A/B of the CPU inference fast path, piece by piece, beside the plain model (and open_clip).

One process, the same inputs; calls alternate between the variants (order reversed every other
round) for ``--rounds`` rounds, so that this VM's minute-to-minute drift hits all of them alike.
Prints samples/s (median) and, against the plain model, the median and inter-quartile range of the
per-round ratios. Variants (``clipforge.fastpath.InferenceOptions``):

  plain      the model as ``create_model`` builds it (no fast path)
  pieces     cache-sized pieces, one after another on all threads (streams=1, plain blocks)
  streams    pieces on concurrent single-threaded streams (plain blocks)
  fused      streams + blocks that add residuals inside the GEMMs (the default of optimize_for_inference)
  open_clip  open_clip's model with the same shapes (when open_clip imports)

    python benchmarks/ab_fastpath.py --model ViT-B/32 --batch 64 --rounds 8 [--tower text] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

VARIANTS = {
    "pieces": {"streams": 1, "fused_blocks": False},
    "streams": {"fused_blocks": False},
    "fused": {},
}


def _inputs(model, tower: str, batch: int):
    if tower == "image":
        size = model.image_size
        return torch.randn(batch, 3, size, size)
    ctx, vocab = model.config.text.context_length, model.config.text.vocab_size
    x = torch.zeros(batch, ctx, dtype=torch.long)
    x[:, 0], x[:, 1:20], x[:, 20] = vocab - 2, torch.randint(1, vocab - 2, (batch, 19)), vocab - 1
    return x


def _encoders(args) -> dict:
    from clipforge import InferenceOptions, create_model, optimize_for_inference

    torch.manual_seed(0)
    plain = create_model(args.model).eval()
    models = {"plain": plain}
    for name, options in VARIANTS.items():
        models[name] = optimize_for_inference(copy.deepcopy(plain), InferenceOptions(**options), inplace=True)
    method = "encode_image" if args.tower == "image" else "encode_text"
    fns = {name: getattr(m, method) for name, m in models.items()}
    try:
        import open_clip

        peer = open_clip.create_model(args.model.replace("/", "-") + "-quickgelu").eval()
        fns["open_clip"] = getattr(peer, method)
    except Exception:  # noqa: BLE001 - no open_clip here: the clipforge variants alone
        pass
    return fns, _inputs(plain, args.tower, args.batch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B/32")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--tower", choices=["image", "text"], default="image")
    p.add_argument("--out", help="also write the figures as JSON")
    args = p.parse_args()
    fns, x = _encoders(args)
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for fn in fns.values():  # warm-up
            fn(x)
        for r in range(args.rounds):
            for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                start = time.perf_counter()
                fns[name](x)
                times[name].append(time.perf_counter() - start)
    print(f"{args.model} encode_{args.tower}, batch {args.batch}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    result = {"model": args.model, "tower": args.tower, "batch": args.batch, "threads": torch.get_num_threads(),
              "rounds": args.rounds, "samples_per_s": {}, "vs_plain": {}}
    for name, ts in times.items():
        rate = args.batch / statistics.median(ts)
        result["samples_per_s"][name] = rate
        line = f"  {name:10s} {rate:8.2f} samples/s"
        if name != "plain":
            ratios = sorted(a / b for a, b in zip(times["plain"], ts))
            q = len(ratios) // 4
            result["vs_plain"][name] = [statistics.median(ratios), ratios[q], ratios[-1 - q]]
            line += f"   {statistics.median(ratios):.3f}x plain (IQR {ratios[q]:.3f}-{ratios[-1 - q]:.3f})"
        print(line)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
