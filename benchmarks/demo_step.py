"""One training step of the demo model alone (no data loading): AdamW kernels, memory format, batch, image size.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/demo_step.py

Random images and tokens; forward, a contrastive-style loss, backward and the AdamW update on 2
threads. The variants run interleaved, round after round, so a change in the machine's speed (steal
time on a VM) touches them alike; the median of the rounds is printed. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

import clipforge
from clipforge.registry import get_config


def make_step(fused: bool, channels_last: bool, batch: int, size: int):
    torch.manual_seed(0)
    config = get_config("demo-rn16")
    config = dataclasses.replace(config, vision=dataclasses.replace(config.vision, image_size=size))
    model = clipforge.create_model(config).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused, foreach=None if fused else True)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    tokens = torch.randint(1, 2000, (batch, 32))

    def step() -> None:
        loss = (model.encode_image(images) @ model.encode_text(tokens).T).logsumexp(1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = {  # (fused, channels_last, batch, image size)
        "foreach AdamW, channels_last, 128, 64 px": (False, True, 128, 64),
        "fused AdamW, channels_last, 128, 64 px (the recipe)": (True, True, 128, 64),
        "foreach AdamW, contiguous, 128, 64 px": (False, False, 128, 64),
        "fused AdamW, channels_last, 96, 64 px": (True, True, 96, 64),
        "fused AdamW, channels_last, 192, 64 px": (True, True, 192, 64),
        "fused AdamW, channels_last, 256, 64 px": (True, True, 256, 64),
        "fused AdamW, channels_last, 128, 32 px": (True, True, 128, 32),
    }
    steps = {name: make_step(*v) for name, v in variants.items()}
    for step in steps.values():
        step(), step()  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - start)
    print(f"| variant | s per step | ms per sample |  ({args.threads} threads, median of {args.rounds} rounds)")
    print("|---|---|---|")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {1e3 * median / variants[name][2]:.2f} |")


if __name__ == "__main__":
    main()
