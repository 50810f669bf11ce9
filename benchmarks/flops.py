"""Model FLOPs (torch.utils.flop_counter) and the hardware's measured matrix-multiply peak.

FLOPs count 2 per multiply-add, as the CLIP paper's figures do (ViT-B/32 forward: 8.8 G image +
6.0 G text per sample at context 77). Utilisation = achieved FLOP/s / measured matmul peak, the
peak measured here rather than taken from a datasheet (on an H100, bf16 8192³ ≈ 770 TFLOP/s).

Run directly for a table: ``python benchmarks/flops.py --models demo-rn ViT-B/32``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

# Counting lives with the scaling study (clipforge.eval.analyses.compute); the benchmarks import it from here.
from clipforge.eval.analyses.compute import count_flops, model_flops_per_sample  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parent))


def matmul_peak_tflops(device: str, dtype: torch.dtype | None = None, size: int | None = None,
                       seconds: float = 2.0) -> dict[str, Any]:
    """The best FLOP/s of repeated square matrix products: bf16 8192³ on a GPU, fp32 2048³ on a CPU."""
    cuda = device.startswith("cuda")
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    size = size or (8192 if cuda else 2048)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    flops = 2 * size**3
    best = float("inf")
    deadline = time.perf_counter() + seconds
    reps = 10 if cuda else 1
    torch.matmul(a, b)  # warm-up (kernel selection, page faults)
    while True:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        if cuda:
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / reps)
        if time.perf_counter() > deadline:
            break
    return {"dtype": str(dtype).replace("torch.", ""), "size": size, "tflops": flops / best / 1e12}


def main(argv: list[str] | None = None) -> int:
    from clipforge import create_model
    from workloads import synthetic_batch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["demo-rn", "ViT-B/32"])
    parser.add_argument("--context", type=int, default=None, help="token length fed (default: the model's context)")
    args = parser.parse_args(argv)
    print(f"matmul peak: {matmul_peak_tflops('cpu')}")
    print("| model | image fwd GFLOP | text fwd GFLOP | fwd | train step (fwd+bwd) |")
    print("|---|---|---|---|---|")
    for name in args.models:
        model = create_model(name)
        images, tokens = synthetic_batch(2, model.config, seed=0, trim=False)
        if args.context:
            tokens = tokens[:, : args.context]
        f = model_flops_per_sample(model, images, tokens)
        print(f"| {name} | {f['image_fwd'] / 1e9:.2f} | {f['text_fwd'] / 1e9:.2f} | {f['fwd'] / 1e9:.2f} | "
              f"{f['train_step'] / 1e9:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
