"""Real processes on gloo: 2 ranks × B give the loss and gradients of 1 process × 2B.

Computed in float64 and compared within 1e-10, so the test checks the algorithm (float32 differs from
the one-process result by float32 rounding only, about 2e-6 on these gradients).

The two ranks are spawned by torch.multiprocessing and run DDP (CLIP and SigLIP losses, and DDP
with exact accumulation) and FSDP2 (``fully_shard``); each writes its loss and full gradients to a
file, and the test compares them with one process computing the whole batch.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipforge.factory import create_model
from clipforge.train.accumulate import forward_backward
from clipforge.train.distributed import DistInfo, wrap_model
from clipforge.train.objective import TrainModel

B = 3
SCENARIOS = {  # name: (loss, strategy, micro-batches per rank)
    "ddp_clip": ("clip", "ddp", 1),
    "ddp_siglip": ("siglip", "ddp", 1),
    "ddp_clip_accum": ("clip", "ddp", 2),
    "fsdp_clip": ("clip", "fsdp", 1),
}
WORLD = 2


def _model(loss: str) -> TrainModel:
    torch.manual_seed(0)
    # float64: the comparison then tests the algorithm, not float32 summation order
    clip = create_model("tiny-vit", dtype=torch.float64, text={"vocab_size": 500, "context_length": 12})
    return TrainModel(clip, loss).train()


def _global_batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` micro-batches of B samples, identical in every process."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        tokens = torch.randint(1, 499, (B, 12), generator=g)
        tokens[:, -1] = 499
        out.append((torch.randn(B, 3, 32, 32, generator=g, dtype=torch.float64), tokens))
    return out


def _full_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {}
    for name, param in model.named_parameters():
        grad = param.grad
        if grad is not None:
            grads[name.removeprefix("module.")] = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
    return grads


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    info = DistInfo(rank, WORLD, rank, torch.device("cpu"), "gloo")
    try:
        for name, (loss_kind, strategy, k) in SCENARIOS.items():
            model = wrap_model(_model(loss_kind), strategy, info)
            batches = _global_batches(WORLD * k)[rank * k:(rank + 1) * k]  # rank-major, as the gather
            loss, diagnostics = forward_backward(model, batches, loss_kind, info.device)
            torch.save({"loss": loss, "grads": _full_grads(model)}, Path(out_dir) / f"{name}_{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ranks")
    torch.set_num_threads(1)
    mp.spawn(_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_two_ranks_equal_one_process(rank_results: Path, scenario: str):
    loss_kind, _, k = SCENARIOS[scenario]
    reference = _model(loss_kind)
    batches = _global_batches(WORLD * k)
    whole = (torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    ref_loss, _ = forward_backward(reference, [whole], loss_kind, torch.device("cpu"))
    ref_grads = _full_grads(reference)
    ranks = [torch.load(rank_results / f"{scenario}_{r}.pt", weights_only=True) for r in range(WORLD)]
    # Each rank's loss covers its own rows; their mean is the global loss.
    assert sum(r["loss"].item() for r in ranks) / WORLD == pytest.approx(ref_loss.item(), abs=1e-10)
    for result in ranks:  # after the gradient all-reduce every rank holds the same, global gradient
        assert result["grads"].keys() == ref_grads.keys()
        for name, grad in ref_grads.items():
            torch.testing.assert_close(result["grads"][name], grad, atol=1e-10, rtol=0,
                                       msg=lambda m: f"{scenario} {name}: {m}")
