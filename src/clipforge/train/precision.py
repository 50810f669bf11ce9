"""Numerical precision and memory: fp32, bf16 autocast, fp16 with loss scaling; checkpointing; compile.

Parameters and optimizer state stay in float32 in every mode; autocast chooses the precision of
each operation (no casts inside the model). fp16's narrow range needs a dynamic loss scale
(``GradScaler``), bf16 does not.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class PrecisionConfig:
    dtype: str = "fp32"  # "fp32", "bf16" (autocast) or "fp16" (autocast + GradScaler)
    grad_checkpointing: bool = False  # recompute activations in the backward pass
    compile: bool = False  # torch.compile the training forward
    channels_last: bool = False  # NHWC convolutions (faster for ResNets with oneDNN on CPUs and on tensor cores)


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
