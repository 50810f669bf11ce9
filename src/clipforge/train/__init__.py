"""Training (application layer): losses, distributed gather, exact accumulation, optimizer, trainer.

- :func:`clip_loss`, :func:`siglip_loss`: pure loss functions of features; the loss components that
  own them, their parameters and distributed strategy, selected by ``[loss] kind`` (:mod:`.losses`).
- :func:`~clipforge.train.distributed.gather_features`: the one all-gather with gradients.
- :class:`Trainer` with :class:`TrainConfig` / :func:`load_config`: one loop for every variant
  (``clipforge train --config configs/demo.toml``; ``torchrun ... -m clipforge train`` for several
  processes).

The trainer and its config import the data pipeline and torch.distributed.checkpoint, so they are
loaded on first use: ``import clipforge.train`` stays light.
"""

from __future__ import annotations

from typing import Any

from clipforge.train.losses import clip_loss, siglip_loss

_LAZY = {
    "Trainer": "clipforge.train.loop",
    "NonFiniteError": "clipforge.train.loop",
    "TrainConfig": "clipforge.train.config",
    "ConfigError": "clipforge.train.config",
    "load_config": "clipforge.train.config",
}

__all__ = ["clip_loss", "siglip_loss", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipforge.train' has no attribute {name!r}")
