"""Losses as components. Each loss is one module here that declares, for itself:

* its ``[loss]`` config keys (a frozen dataclass with ``kind``), checked when a recipe is read;
* its extra parameters (SigLIP's bias, where the model has none), trained and checkpointed with the model's;
* the scalars it needs from the model (``inputs``), its diagnostics and its distributed strategy
  (which features it gathers, and how);
* what happens to the model at the start (initial temperature) and after each optimizer step (clamp).

Adding a loss is one module that calls :func:`register_loss`, and its test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Diagnostics = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LossConfig:
    """The ``[loss]`` section; ``kind`` selects the loss, whose own dataclass holds the other keys."""

    kind: str = "clip"

    @classmethod
    def variant(cls, data: dict[str, Any]) -> type["LossConfig"]:
        """The dataclass of the loss a raw ``[loss]`` table names (its ``kind``, default "clip")."""
        return _entry(data.get("kind", "clip"))[0]


class Loss(nn.Module):
    """A contrastive loss over this rank's features against every rank's (see :mod:`.clip`)."""

    def __init__(self, config: LossConfig):
        super().__init__()
        self.config = config

    def inputs(self, clip: nn.Module) -> dict[str, torch.Tensor]:
        """Tensors the loss needs from parameters (exp(logit_scale), a bias), computed inside the
        training model's forward so that DDP/FSDP see every parameter used."""
        raise NotImplementedError

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                **inputs: torch.Tensor) -> tuple[torch.Tensor, Diagnostics]:
        """This rank's loss for its normalized features [B, D], and 0-dim diagnostics."""
        raise NotImplementedError

    def bind(self, clip: nn.Module) -> None:
        """Called once with the model it will train, before the optimizer sees the parameters (e.g. to
        drop a parameter of its own that the model already has)."""

    def init_model(self, clip: nn.Module) -> None:
        """Set what the loss initialises in a model trained from scratch (its temperature)."""

    @torch.no_grad()
    def after_step(self, clip: nn.Module) -> None:
        """Called after every optimizer update (e.g. the temperature clamp)."""


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors to float32; float32/float64 unchanged (the softmax over a large batch
    is where half precision loses most)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


_LOSSES: dict[str, tuple[type[LossConfig], type[Loss]]] = {}


def register_loss(config_class: type[LossConfig], loss_class: type[Loss]) -> None:
    kind = config_class.kind
    if kind in _LOSSES:
        raise ValueError(f"loss {kind!r} is already registered")
    _LOSSES[kind] = (config_class, loss_class)


def _entry(kind: str) -> tuple[type[LossConfig], type[Loss]]:
    if kind not in _LOSSES:
        raise ValueError(f"loss.kind {kind!r}: expected one of {', '.join(sorted(_LOSSES))}")
    return _LOSSES[kind]


def loss_kinds() -> list[str]:
    return sorted(_LOSSES)


def build_loss(config: LossConfig) -> Loss:
    config_class, loss_class = _entry(config.kind)
    if not isinstance(config, config_class):
        raise ValueError(f"loss config {config!r} is not a {config_class.__name__}")
    return loss_class(config)


from clipforge.train.losses import clip, siglip  # noqa: E402,F401  (they register themselves)
from clipforge.train.losses.clip import clip_loss  # noqa: E402
from clipforge.train.losses.siglip import siglip_loss  # noqa: E402

__all__ = ["Loss", "LossConfig", "Diagnostics", "build_loss", "register_loss", "loss_kinds", "upcast",
           "clip_loss", "siglip_loss"]
