"""Half-precision statistics and bf16 towers on real gloo ranks: DDP and FSDP2.

Two ranks × B take two optimizer steps (bf16 autocast, LowPrecisionAdamW with bf16 statistics):

* DDP, the text tower in bf16: the replicas stay bitwise equal (their rounding streams are the same);
* FSDP2, both towers in bf16 (FSDP2 needs one dtype per unit): the statistics are bf16 DTensors;
* both: the update is one process's on 2B, and the state saved through torch.distributed.checkpoint's
  full state dict (as the trainer's checkpoints) and loaded into a fresh model repeats the next step bitwise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipforge.factory import create_model
from clipforge.train.accumulate import StepContext, forward_backward
from clipforge.train.distributed import DistInfo, wrap_model
from clipforge.train.losses import LossConfig, build_loss
from clipforge.train.lowprec import LowPrecisionAdamW
from clipforge.train.objective import TrainModel
from clipforge.train.optim import param_groups
from clipforge.train.precision import PrecisionConfig, store_towers

B, WORLD, STEPS = 3, 2, 2
CTX = StepContext(torch.device("cpu"), autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16), trim_tokens=True)
TOWERS = {"ddp": PrecisionConfig(dtype="bf16", text_weights="bf16"),
          "fsdp": PrecisionConfig(dtype="bf16", text_weights="bf16", vision_weights="bf16")}


def _model(strategy: str) -> TrainModel:
    torch.manual_seed(0)
    clip = create_model("tiny-vit", text={"vocab_size": 500, "context_length": 12})
    store_towers(clip, TOWERS[strategy])
    return TrainModel(clip, build_loss(LossConfig.variant({})())).train()


def _optimizer(model) -> LowPrecisionAdamW:
    return LowPrecisionAdamW(param_groups(model, 0.2), lr=1e-2, betas=(0.9, 0.98), eps=1e-6, seed=3)


def _batches(step: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(100 + step)
    out = []
    for _ in range(count):
        tokens = torch.randint(1, 499, (B, 12), generator=g)
        tokens[:, -1] = 499
        out.append((torch.randn(B, 3, 32, 32, generator=g), tokens))
    return out


def _full(model) -> dict[str, torch.Tensor]:
    return {name.removeprefix("module."): (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().float().clone()
            for name, p in model.named_parameters()}


def _steps(model, optimizer, rank: int | None, steps=range(STEPS)) -> None:
    for step in steps:
        optimizer.zero_grad(set_to_none=True)
        batches = _batches(step, WORLD)
        if rank is None:  # one process: the whole batch
            batches = [(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))]
        else:
            batches = [batches[rank]]
        forward_backward(model, batches, CTX)
        optimizer.step()


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    info = DistInfo(rank, WORLD, rank, torch.device("cpu"), "gloo")
    try:
        for strategy in ("ddp", "fsdp"):
            model = wrap_model(_model(strategy), strategy, info)
            optimizer = _optimizer(model)
            _steps(model, optimizer, rank)
            result = {"params": _full(model), **_resume(model, optimizer, rank, info, strategy)}
            torch.save(result, Path(out_dir) / f"{strategy}_{rank}.pt")
    finally:
        dist.destroy_process_group()


def _resume(model, optimizer, rank: int, info: DistInfo, strategy: str) -> dict:
    """Save the full state dict (as the trainer's checkpoints do), load it into a fresh wrapped model;
    give both the same gradients: one more step must agree bitwise (local shards compared)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    full = StateDictOptions(full_state_dict=True)  # every rank gets the full state (rank 0 only with cpu_offload)
    model_state, optim_state = get_state_dict(model, optimizer, options=full)
    dtypes = sorted({str(v.dtype) for s in optimizer.state.values() for k, v in s.items() if k.startswith("exp_avg")})
    # the statistics of sharded parameters are sharded alike (the replicated loss scalars' are plain)
    sharded = [hasattr(s["exp_avg"], "to_local") == hasattr(p, "to_local") for p, s in optimizer.state.items()]
    sharded = all(sharded) and any(hasattr(s["exp_avg"], "to_local") for s in optimizer.state.values())
    fresh = wrap_model(_model(strategy), strategy, info)
    fresh_optimizer = _optimizer(fresh)
    set_state_dict(fresh, fresh_optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=True))
    optimizer.zero_grad(set_to_none=True)
    forward_backward(model, [_batches(STEPS, WORLD)[rank]], CTX)
    for mine, theirs in zip(fresh.parameters(), model.parameters()):
        mine.grad = theirs.grad.clone()
    optimizer.step()
    fresh_optimizer.step()
    same = all(torch.equal(a.to_local() if hasattr(a, "to_local") else a, b.to_local() if hasattr(b, "to_local") else b)
               for a, b in zip(model.parameters(), fresh.parameters()))
    loaded = [str(v.dtype) for s in fresh_optimizer.state.values() for k, v in s.items() if k.startswith("exp_avg")]
    return {"moment_dtypes": dtypes, "sharded_state": sharded, "resumed_equal": same, "loaded_dtypes": sorted(set(loaded))}


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=True)
    return out


def _reference(strategy: str) -> tuple[dict, dict]:
    model = _model(strategy)
    start = _full(model)
    _steps(model, _optimizer(model), None)
    return start, _full(model)


def _assert_same_update(params: dict, start: dict, reference: dict, strategy: str) -> None:
    """The ranks' update is one process's on the whole batch: the same direction and size. (Not within
    a tight tolerance: bf16 autocast on a batch of 3 or 6 rounds differently, and Adam's first steps
    turn any difference in a near-zero gradient into a step of ±lr.)"""
    assert params.keys() == reference.keys()
    for name, ref in reference.items():
        ours, theirs = (params[name] - start[name]).flatten(), (ref - start[name]).flatten()
        cosine = torch.nn.functional.cosine_similarity(ours, theirs, dim=0).item()
        ratio = (ours.norm() / theirs.norm()).item()
        assert cosine > 0.9 and 0.8 < ratio < 1.25, f"{strategy} {name}: cosine {cosine:.3f}, norm ratio {ratio:.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_low_precision_training_on_two_ranks(rank_results: Path, strategy: str):
    ranks = [torch.load(rank_results / f"{strategy}_{r}.pt", weights_only=True) for r in range(WORLD)]
    start, reference = _reference(strategy)
    for result in ranks:
        _assert_same_update(result["params"], start, reference, strategy)
    for result in ranks:
        assert result["moment_dtypes"] == ["torch.bfloat16"] and result["loaded_dtypes"] == ["torch.bfloat16"]
        assert result["resumed_equal"]  # saved, loaded into a fresh model: the next step is bitwise the same
    if strategy == "ddp":  # the replicas round with the same streams: bitwise equal
        assert all(torch.equal(ranks[0]["params"][k], ranks[1]["params"][k]) for k in reference)
    else:
        assert all(result["sharded_state"] for result in ranks)
