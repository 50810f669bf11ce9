"""Real processes on gloo: 2 ranks × B give the loss and gradients of 1 process × 2B.

Computed in float64 and compared within 1e-10, so the test checks the algorithm (float32 differs from
the one-process result by float32 rounding only, about 2e-6 on these gradients).

The two ranks are spawned by torch.multiprocessing and run DDP (CLIP and SigLIP losses, and DDP
with exact accumulation) and FSDP2 (``fully_shard``); each writes its loss and full gradients to a
file, and the test compares them with one process computing the whole batch. The SigLIP model's
scenarios use the loss's ring exchange (one [B, B] block per step, never the whole matrix) and its
all-gather.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipforge.factory import create_model
from clipforge.train.accumulate import StepContext, forward_backward
from clipforge.train.distributed import DistInfo, wrap_model
from clipforge.train.losses import LossConfig, build_loss
from clipforge.train.objective import TrainModel

CPU = StepContext(torch.device("cpu"), trim_tokens=True)

B = 3
SCENARIOS = {  # name: (loss, strategy, micro-batches per rank, model, loss settings)
    "ddp_clip": ("clip", "ddp", 1, "tiny-vit", {}),
    "ddp_siglip": ("siglip", "ddp", 1, "tiny-vit", {}),  # the loss's own bias, ring exchange
    "ddp_clip_accum": ("clip", "ddp", 2, "tiny-vit", {}),
    "fsdp_clip": ("clip", "fsdp", 1, "tiny-vit", {}),
    "ddp_siglip_model_ring": ("siglip", "ddp", 1, "tiny-siglip", {"exchange": "ring"}),
    "ddp_siglip_model_gather": ("siglip", "ddp", 1, "tiny-siglip", {"exchange": "gather"}),
    "ddp_siglip_model_ring_accum": ("siglip", "ddp", 2, "tiny-siglip", {"exchange": "ring"}),
}
WORLD = 2


def _model(loss: str, name: str = "tiny-vit", settings: dict | None = None) -> TrainModel:
    torch.manual_seed(0)
    # float64: the comparison then tests the algorithm, not float32 summation order
    clip = create_model(name, text={"vocab_size": 500, "context_length": 12})
    config = LossConfig.variant({"kind": loss})(**(settings or {}))
    return TrainModel(clip, build_loss(config)).to(torch.float64).train()


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
        for name, (loss_kind, strategy, k, model_name, settings) in SCENARIOS.items():
            model = wrap_model(_model(loss_kind, model_name, settings), strategy, info)
            batches = _global_batches(WORLD * k)[rank * k:(rank + 1) * k]  # rank-major, as the gather
            loss, diagnostics = forward_backward(model, batches, CPU)
            torch.save({"loss": loss, "grads": _full_grads(model)}, Path(out_dir) / f"{name}_{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ranks")
    torch.set_num_threads(1)
    mp.spawn(_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_two_ranks_equal_one_process(rank_results: Path, scenario: str):
    loss_kind, _, k, model_name, settings = SCENARIOS[scenario]
    reference = _model(loss_kind, model_name, settings)
    batches = _global_batches(WORLD * k)
    whole = (torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    ref_loss, _ = forward_backward(reference, [whole], CPU)
    ref_grads = _full_grads(reference)
    ranks = [torch.load(rank_results / f"{scenario}_{r}.pt", weights_only=True) for r in range(WORLD)]
    # Each rank's loss covers its own rows; their mean is the global loss.
    assert sum(r["loss"].item() for r in ranks) / WORLD == pytest.approx(ref_loss.item(), abs=1e-10)
    for result in ranks:  # after the gradient all-reduce every rank holds the same, global gradient
        assert result["grads"].keys() == ref_grads.keys()
        for name, grad in ref_grads.items():
            torch.testing.assert_close(result["grads"][name], grad, atol=1e-10, rtol=0,
                                       msg=lambda m: f"{scenario} {name}: {m}")


def _torchrun(args: list[str], port: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "clipforge", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_stop_and_resume_is_exact_and_fsdp_continues_it(tmp_path):
    """The whole trainer under torchrun (2 processes, gloo, SigLIP). DDP: a run stopped at step 2 and
    resumed (every rank's RNG and data position restored) repeats the uninterrupted losses bitwise.
    FSDP2 then continues the same checkpoint (loading into and saving from sharded DTensors); its
    gloo reductions are not deterministic in order, so its losses are compared within 1e-3."""
    import shutil

    from clipforge.data.synthetic import WorldConfig, generate_world
    from clipforge.train.logging import read_metrics

    world = tmp_path / "world"
    generate_world(world, WorldConfig(num_train=128, num_val=0, shard_size=32, eval_per_class=2, num_retrieval=4),
                   workers=1)
    common = ["--set", "run.steps=4", "--set", f"data.shards={world}/train/{{00000..00003}}.tar",
              "--set", "data.batch_size=4", "--set", "data.workers=0", "--set", "tokenizer.source=learn",
              "--set", f"tokenizer.captions={world}/train/captions.txt", "--set", "tokenizer.vocab_size=600",
              "--set", "model.name=tiny-vit", "--set", "model.text.context_length=32", "--set", "run.threads=1",
              "--set", "loss.kind=siglip", "--set", "log.tensorboard=false", "--set", "checkpoint.every=0",
              "--set", "schedule.warmup_steps=1", "--set", "eval.every=2", "--set", f"eval.data={world}/eval/heldout"]
    full, part, fsdp = tmp_path / "full", tmp_path / "part", tmp_path / "fsdp"
    runs = [["--out", str(full)], ["--out", str(part), "--stop-at", "2"], ["--out", str(part), "--resume", "latest"]]
    for args in runs:
        result = _torchrun(common + ["--set", "run.distributed=ddp"] + args, _free_port())
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        if "--stop-at" in args:
            shutil.copytree(part, fsdp)  # the step-2 checkpoint, for FSDP below
    assert "resumed from" in result.stdout and result.stdout.count("done: step 4") == 1  # rank 0 prints
    losses = [r["loss_hex"] for r in read_metrics(full)]
    assert len(losses) == 4 and [r["loss_hex"] for r in read_metrics(part)] == losses
    assert [r["step"] for r in read_metrics(part, "eval")] == [2, 4]

    result = _torchrun(common + ["--set", "run.distributed=fsdp", "--out", str(fsdp), "--resume", "latest"], _free_port())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "resumed from" in result.stdout
    expected = [r["loss"] for r in read_metrics(full)]
    assert [r["loss"] for r in read_metrics(fsdp)] == pytest.approx(expected, rel=1e-3)
    import clipforge

    model, _, tokenizer = clipforge.load(fsdp / "final")
    assert tokenizer.vocab_size == model.config.text.vocab_size
