"""AdamW with the paper's parameter groups, the cosine schedule, and locked towers (LiT).

Paper, Appendix F: decoupled weight decay (Loshchilov & Hutter 2019) on weights only, none on
gains, biases, 1-D parameters and the logit scale; β1 0.9; β2 0.98 and ε 1e-6 for ViTs, 0.999 and
1e-8 for ResNets; a cosine schedule (Loshchilov & Hutter 2016) after a linear warm-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from clipforge import families


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float | None = None  # None: the paper's value for the image tower's family
    eps: float | None = None  # None: likewise
    clip_grad_norm: float | None = None  # None: no clipping
    lock_image: bool = False  # LiT: freeze the image tower ...
    lock_image_unlocked_groups: int = 0  # ... but its last n layer groups
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    fused: bool = False  # one fused AdamW kernel per step (CPU and CUDA) instead of the foreach kernels
    moment_dtype: str = "fp32"  # Adam's statistics stored in "fp32", "bf16" or "fp16" (paper 2.5); update in fp32
    rounding: str | None = None  # "stochastic" or "nearest" for what is stored in bf16/fp16; None: stochastic


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str = "cosine"  # "cosine" or "constant" (both after the warm-up)
    warmup_steps: int = 2000
    min_lr: float = 0.0


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Gains, biases, 1-D tensors (norms, class embedding) and the loss scalars get no weight decay."""
    return param.ndim < 2 or name.rsplit(".", 1)[-1] in ("bias", "logit_scale", "logit_bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters: with and without weight decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if _no_decay(name, param) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, adam: tuple[float, float], seed: int = 0) -> torch.optim.Optimizer:
    """AdamW over ``model``'s trainable parameters; ``adam`` is the (β2, ε) the image tower's family
    declares (the paper's, Appendix F), used where the config leaves them unset.

    PyTorch's AdamW, unless statistics or parameters are stored in half precision: then
    :class:`~clipforge.train.lowprec.LowPrecisionAdamW` (``seed`` seeds its stochastic rounding)."""
    beta2, eps = adam
    beta2 = cfg.beta2 if cfg.beta2 is not None else beta2
    eps = cfg.eps if cfg.eps is not None else eps
    groups = [g for g in param_groups(model, cfg.weight_decay) if g["params"]]
    if not groups:
        raise ValueError("no trainable parameters: both towers and every parameter are locked")
    low_precision = cfg.moment_dtype != "fp32" or any(p.dtype != torch.float32 for g in groups for p in g["params"])
    if low_precision:
        from clipforge.train.lowprec import DTYPES, LowPrecisionAdamW

        if cfg.moment_dtype not in DTYPES:
            raise ValueError(f"optim.moment_dtype {cfg.moment_dtype!r}: expected one of {sorted(DTYPES)}")
        return LowPrecisionAdamW(groups, lr=cfg.lr, betas=(cfg.beta1, beta2), eps=eps, moment_dtype=DTYPES[cfg.moment_dtype],
                                 stochastic=cfg.rounding != "nearest", seed=seed)
    # Both implementations keep the arithmetic order fixed from run to run (bitwise-exact resume);
    # fused also takes GradScaler's overflow flag on the device instead of reading it to the host.
    kind = {"fused": True} if cfg.fused else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, beta2), eps=eps, **kind)


def learning_rate(step: int, base_lr: float, total_steps: int, cfg: ScheduleConfig) -> float:
    """The learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine or constant."""
    if cfg.kind not in ("cosine", "constant"):
        raise ValueError(f"schedule.kind {cfg.kind!r}: expected 'cosine' or 'constant'")
    if step < cfg.warmup_steps:
        return base_lr * (step + 1) / cfg.warmup_steps
    if cfg.kind == "constant":
        return base_lr
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (base_lr - cfg.min_lr)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def image_layer_groups(clip: nn.Module) -> list[list[nn.Module | nn.Parameter]]:
    """The image tower in order, input to output: stem, one group per block/stage, head."""
    return families.of(clip.config.vision).layer_groups(clip.visual)


def text_layer_groups(clip: nn.Module) -> list[list[nn.Module | nn.Parameter]]:
    family = families.of(clip.config.text)
    return family.layer_groups(family.tower_module(clip))


def lock_groups(groups: list[list[nn.Module | nn.Parameter]], unlocked: int) -> list[nn.Module]:
    """Freeze all groups but the last ``unlocked``; returns the frozen modules (kept in eval mode
    by the trainer, so that frozen BatchNorm layers do not update their statistics)."""
    if not 0 <= unlocked <= len(groups):
        raise ValueError(f"cannot leave {unlocked} of {len(groups)} layer groups unlocked")
    frozen_modules = []
    for group in groups[: len(groups) - unlocked]:
        for item in group:
            params = [item] if isinstance(item, nn.Parameter) else list(item.parameters())
            for param in params:
                param.requires_grad_(False)
            if isinstance(item, nn.Module):
                frozen_modules.append(item)
    return frozen_modules


def apply_locks(clip: nn.Module, cfg: OptimConfig) -> list[nn.Module]:
    """Lock the towers the config asks for (LiT, Zhai et al. 2022); returns the frozen modules."""
    frozen = []
    if cfg.lock_image:
        frozen += lock_groups(image_layer_groups(clip), cfg.lock_image_unlocked_groups)
    if cfg.lock_text:
        frozen += lock_groups(text_layer_groups(clip), cfg.lock_text_unlocked_layers)
    return frozen


def clip_gradients(model: nn.Module, max_norm: float | None) -> torch.Tensor:
    """The global gradient norm (over ranks and shards), a 0-dim float32 tensor on the gradients'
    device, clipping to ``max_norm`` when given. Nothing is read to the host.

    A non-finite norm is not special-cased (that would need a read): clipping then scales the
    gradients by 0 or NaN, which leaves the norm non-finite, and the trainer skips the update.
    FSDP's sharded gradients (DTensors) and the replicated loss scalars are measured separately and
    combined, because one norm computation cannot mix them.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return torch.zeros((), dtype=torch.float32, device=next(model.parameters()).device)
    sharded = [p for p in params if hasattr(p.grad, "full_tensor")]
    plain = [p for p in params if not hasattr(p.grad, "full_tensor")]
    squares = torch.zeros((), dtype=torch.float32, device=params[0].grad.device)
    if sharded:
        squares = squares + torch.nn.utils.get_total_norm([p.grad for p in sharded]).full_tensor().float() ** 2
    if plain:
        squares = squares + torch.nn.utils.get_total_norm([p.grad for p in plain]).float().to(squares.device) ** 2
    total = squares.sqrt()
    if max_norm is not None:
        for group in (sharded, plain):
            if group:
                torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
    return total
