"""Processes and model wrapping on PyTorch's own engine: torchrun, DDP, FSDP2 (``fully_shard``).

The only code the contrastive loss needs from ``torch.distributed`` is :func:`gather_features`:
an all-gather whose backward sends each rank the gradient of its own slice, summed over all
ranks' losses. Together with DDP's gradient averaging that gives exactly the single-process
gradient of the global batch (see :mod:`clipforge.train.losses`).

Restarts. ``torchrun --max-restarts N`` restarts every worker after a failure, and its workers
share the agent's store (torch >= 2.4), which still holds the keys of the failed attempt: gloo
and NCCL then connect to the dead processes' addresses. :func:`init_distributed` therefore gives
every attempt keys of its own, ``clipforge/<generation>/``, with a generation that all ranks of
one attempt agree on through the store (``TORCHELASTIC_RESTART_COUNT`` is counted per node, so
it can differ between the nodes of one attempt).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from clipforge import families
from clipforge.train import watch


@dataclass(frozen=True)
class DistributedConfig:
    """Process-group timeouts in seconds (as torchtitan: minutes to start, about 100 s in training).

    A collective that waits longer fails on every surviving rank, which then exits naming the
    rank, step and collective (:mod:`clipforge.train.watch`); NCCL's async error handling is on.
    """

    init_timeout_s: float = 300.0  # joining the group, start-up, the first step (compilation, data workers)
    step_timeout_s: float = 100.0  # every collective of a training step after the first
    checkpoint_timeout_s: float = 600.0  # checkpoints, evaluation, the final model (rank 0 writes, the others wait)

    def __post_init__(self) -> None:
        for name in ("init_timeout_s", "step_timeout_s", "checkpoint_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"distributed.{name} must be > 0 seconds, got {getattr(self, name)}")


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


def init_distributed(device: str = "auto", config: DistributedConfig = DistributedConfig()) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (NCCL on GPUs, else gloo).

    ``device``: "auto" (CUDA when available), "cpu" or "cuda". A single process (no WORLD_SIZE, or 1)
    starts no process group. The group starts with ``config.init_timeout_s``; the trainer switches
    to the step timeout after the first step (:func:`set_timeout`).
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
        # A timed-out NCCL collective tears the process down instead of leaving it hanging.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        timeout = timedelta(seconds=config.init_timeout_s)
        store = attempt_store(rank, world_size, timeout)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout,
                                device_id=target if use_cuda else None)
        # Its own client: the heartbeat thread never waits behind the main thread's store calls.
        watch.start(store.clone() if hasattr(store, "clone") else store, rank, world_size, config.init_timeout_s)
    return DistInfo(rank, world_size, local_rank, target, backend)


def attempt_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """The job's store (torchrun's ``env://``) under a prefix that only this attempt's ranks use."""
    from torch.distributed.rendezvous import rendezvous

    store, _, _ = next(rendezvous("env://", rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    generation = _agree_generation(store, rank, world_size, timeout.total_seconds())
    return dist.PrefixStore(f"clipforge/{generation}", store)


def _agree_generation(store: dist.Store, rank: int, world_size: int, timeout_s: float) -> int:
    """A number that every rank of this attempt gets and no earlier attempt used.

    Rank 0 draws it from a counter. Every other rank announces a fresh random name and waits for
    rank 0 to answer under that name, which no earlier attempt can have written; rank 0 keeps
    answering each rank's latest announcement (an earlier attempt's may still be there) until that
    rank confirms under the new generation.
    """
    if rank != 0:
        name = uuid.uuid4().hex
        store.set(f"clipforge/hello/{rank}", name)
        try:
            generation = int(store.get(f"clipforge/welcome/{name}"))
        except RuntimeError as err:  # DistStoreError: rank 0 never answered
            raise RuntimeError(f"rank {rank}: rank 0 did not start within distributed.init_timeout_s = "
                               f"{timeout_s:g} s ({err})") from err
        store.set(f"clipforge/joined/{generation}/{rank}", name)
        return generation
    generation = store.add("clipforge/generation", 1)
    answered: dict[int, bytes] = {}
    waiting, deadline = set(range(1, world_size)), time.monotonic() + timeout_s
    while waiting:
        for other in sorted(waiting):
            hello = f"clipforge/hello/{other}"
            if store.check([hello]) and answered.get(other) != (name := store.get(hello)):
                store.set(f"clipforge/welcome/{name.decode()}", str(generation))
                answered[other] = name
        waiting = {r for r in waiting if not store.check([f"clipforge/joined/{generation}/{r}"])}
        if waiting and time.monotonic() > deadline:
            raise RuntimeError(f"rank 0: rank(s) {sorted(waiting)} did not join within distributed.init_timeout_s = "
                               f"{timeout_s:g} s")
        time.sleep(0.02 if waiting else 0)
    return generation


def set_timeout(seconds: float) -> None:
    """Change the default group's collective timeout (gloo and NCCL), as torchtitan does after step 1."""
    if dist.is_available() and dist.is_initialized():
        from torch.distributed.distributed_c10d import _set_pg_timeout  # torchtitan uses it too

        _set_pg_timeout(timedelta(seconds=seconds))
    watch.set_timeout(seconds)


def destroy_distributed() -> None:
    watch.stop()
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
        with watch.waiting("all-gather of features"):
            dist.all_gather(list(out.chunk(world_size)), features.contiguous())
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        # What follows in backward waits for DDP's / FSDP's gradient reduction.
        watch.doing("backward: gradient all-reduce")
        with watch.waiting("reduce-scatter of the features' gradients"):
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
    with watch.waiting():
        dist.all_reduce(value)
    return value / world_size


def broadcast_object(obj: object, src: int = 0) -> object:
    """A picklable object from ``src`` to every rank (in-process only: never used on files)."""
    _, world_size = _world()
    if world_size == 1:
        return obj
    box = [obj]
    with watch.waiting():
        dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: object) -> list[object]:
    """One object from every rank, in rank order, on every rank."""
    _, world_size = _world()
    if world_size == 1:
        return [obj]
    out: list[object] = [None] * world_size
    with watch.waiting():
        dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if _world()[1] > 1:
        with watch.waiting():
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
