"""Numerical precision and memory: fp32, bf16 autocast, fp16 with loss scaling; checkpointing; compile.

Autocast chooses the precision of each operation (no casts inside the model). fp16's narrow range
needs a dynamic loss scale (``GradScaler``), bf16 does not. Parameters stay in float32, except the
towers named by ``text_weights`` / ``vision_weights`` = "bf16": those are stored in bf16 with no
float32 master copy (paper, section 2.5: "half-precision stochastically rounded text encoder
weights"), their updates rounded stochastically by :class:`clipforge.train.lowprec.LowPrecisionAdamW`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from clipforge.train.optim import image_layer_groups, text_layer_groups

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class PrecisionConfig:
    dtype: str = "fp32"  # "fp32", "bf16" (autocast) or "fp16" (autocast + GradScaler)
    grad_checkpointing: bool = False  # recompute activations in the backward pass
    compile: bool = False  # torch.compile the training forward
    channels_last: bool = False  # NHWC convolutions (faster for ResNets with oneDNN on CPUs and on tensor cores)
    text_weights: str = "fp32"  # "fp32" or "bf16": the text tower stored in bf16, no float32 copy (stochastic rounding)
    vision_weights: str = "fp32"  # likewise for the image tower


WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def store_towers(clip: torch.nn.Module, cfg: PrecisionConfig) -> list[torch.nn.Parameter]:
    """Cast the parameters of the towers ``cfg`` names to bf16, in place (buffers such as BatchNorm
    statistics stay float32); the towers' parameters come from their families' layer groups.
    Returns the parameters cast."""
    cast = []
    for name, groups in (("vision_weights", image_layer_groups), ("text_weights", text_layer_groups)):
        dtype = WEIGHT_DTYPES.get(getattr(cfg, name))
        if dtype is None:
            raise ValueError(f"precision.{name} {getattr(cfg, name)!r}: expected one of {sorted(WEIGHT_DTYPES)}")
        if dtype == torch.float32:
            continue
        for group in groups(clip):
            for item in group:
                for param in [item] if isinstance(item, torch.nn.Parameter) else item.parameters():
                    param.data = param.data.to(dtype)
                    cast.append(param)
    return cast


class Precision:
    """Autocast context and (for fp16) the gradient scaler, for one device."""

    def __init__(self, cfg: PrecisionConfig, device: torch.device):
        if cfg.dtype not in DTYPES:
            raise ValueError(f"precision.dtype {cfg.dtype!r}: expected one of {sorted(DTYPES)}")
        self.cfg, self.device = cfg, device
        self.dtype = DTYPES[cfg.dtype]
        self.scaler = torch.amp.GradScaler(device.type) if cfg.dtype == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true size (before clipping or checking them)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()

    def update(self) -> None:
        """Adjust the loss scale after a step (taken or skipped): smaller after an overflow."""
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
