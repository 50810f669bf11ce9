"""Processes and model wrapping on PyTorch's own engine: torchrun, DDP, FSDP2 (``fully_shard``).

The only code the contrastive loss needs from ``torch.distributed`` is :func:`gather_features`:
an all-gather whose backward sends each rank the gradient of its own slice, summed over all
ranks' losses. Together with DDP's gradient averaging that gives exactly the single-process
gradient of the global batch (see :mod:`clipforge.train.loss`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from clipforge import families


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, its device and the backend in use."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (NCCL on GPUs, else gloo).

    ``device``: "auto" (CUDA when available), "cpu" or "cuda". A single process (no WORLD_SIZE, or 1)
    starts no process group.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for but CUDA is not available")
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(target)
    if world_size == 1:
        return DistInfo(device=target)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s),
                                device_id=target if use_cuda else None)
    return DistInfo(rank, world_size, local_rank, target, backend)


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward gives each rank the sum over ranks of its slice's gradient."""

    @staticmethod
    def forward(ctx, features: torch.Tensor) -> torch.Tensor:
        world_size = dist.get_world_size()
        ctx.rank, ctx.batch = dist.get_rank(), features.shape[0]
        out = torch.empty((world_size * features.shape[0], *features.shape[1:]),
                          dtype=features.dtype, device=features.device)
        dist.all_gather(list(out.chunk(world_size)), features.contiguous())
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":
            mine = torch.empty((ctx.batch, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(mine, grad)
            return mine
        dist.all_reduce(grad)  # gloo has no reduce-scatter: reduce everything, keep this rank's slice
        return grad[ctx.rank * ctx.batch:(ctx.rank + 1) * ctx.batch]


def gather_features(features: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' features [R·B, D], rank-major, with gradients; and this rank's offset (rank · B).

    Every rank must pass the same local batch size B. In the backward pass each rank receives the
    gradient of its own slice summed over all ranks' losses (a reduce-scatter).
    """
    rank, world_size = _world()
    if world_size == 1:
        return features, 0
    return _GatherWithGrad.apply(features), rank * features.shape[0]


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over ranks (for logging; no gradient)."""
    _, world_size = _world()
    if world_size == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world_size


def broadcast_object(obj: object, src: int = 0) -> object:
    """A picklable object from ``src`` to every rank (in-process only: never used on files)."""
    _, world_size = _world()
    if world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: object) -> list[object]:
    """One object from every rank, in rank order, on every rank."""
    _, world_size = _world()
    if world_size == 1:
        return [obj]
    out: list[object] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if _world()[1] > 1:
        dist.barrier()


def wrap_model(model: nn.Module, strategy: str, info: DistInfo) -> nn.Module:
    """Wrap for data parallelism: "ddp" replicates, "fsdp" shards parameters per block (FSDP2).

    "auto" picks DDP. With one process the model is returned as is. FSDP2 changes the module in
    place (its parameters become DTensors); ``encode_image``/``encode_text`` stay callable on it.
    """
    if strategy not in ("auto", "ddp", "fsdp"):
        raise ValueError(f"distributed strategy {strategy!r}: expected 'auto', 'ddp' or 'fsdp'")
    if not info.distributed:
        return model
    if strategy == "fsdp":
        return _fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _fully_shard(model: nn.Module) -> nn.Module:
    """FSDP2 per block, then the root. FSDP2 cannot shard 0-d tensors: the loss scalars stay
    replicated and their gradients are averaged by :func:`sync_replicated_grads`."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    scalars = {p for p in model.parameters() if p.ndim == 0}
    for unit in families.shard_units(model):  # each tower's blocks, as its family declares
        fully_shard(unit)
    fully_shard(model, ignored_params=scalars)
    model._clipforge_replicated = sorted(scalars, key=id)  # type: ignore[attr-defined]
    for method in ("encode_image", "encode_text"):
        if hasattr(model, method):
            register_fsdp_forward_method(model, method)
    return model


def sync_replicated_grads(model: nn.Module) -> None:
    """Average over ranks the gradients of parameters that FSDP left replicated (DDP needs none)."""
    replicated = getattr(unwrap(model), "_clipforge_replicated", ())
    _, world_size = _world()
    for param in replicated:
        if param.grad is not None and world_size > 1:
            dist.all_reduce(param.grad)
            param.grad.div_(world_size)


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return False
    return isinstance(unwrap(model), FSDPModule)
