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
from typing import Any, Callable

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))


# The blocks' inference path adds each residual in place (``x.addmm_(a, W.t())``); count it as addmm.
if torch.ops.aten.addmm_ not in flop_counter.flop_registry:
    flop_counter.register_flop_formula(torch.ops.aten.addmm_, get_raw=True)(flop_counter.flop_registry[torch.ops.aten.addmm])


def count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs of the matrix ops (matmul, conv, attention) that ``fn`` runs, forward and backward."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def model_flops_per_sample(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, float]:
    """FLOPs per sample of a CLIP-like model: image and text forward, and a training step's fwd+bwd.

    ``model`` has ``encode_image`` / ``encode_text``; ``images`` [N, 3, S, S], ``tokens`` [N, L]
    (the text cost scales with L: pass the token tensor the workload actually feeds).
    """
    n = images.shape[0]
    with torch.no_grad():
        image = count_flops(lambda: model.encode_image(images))
        text = count_flops(lambda: model.encode_text(tokens))

    def fwd_bwd() -> None:
        loss = model.encode_image(images).float().square().mean() + model.encode_text(tokens).float().square().mean()
        loss.backward()

    train = count_flops(fwd_bwd)
    model.zero_grad(set_to_none=True)
    return {"image_fwd": image / n, "text_fwd": text / n, "fwd": (image + text) / n, "train_step": train / n}


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
