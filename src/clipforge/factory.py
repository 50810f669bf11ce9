"""Building models from names or configs."""

from __future__ import annotations

from typing import Any

import torch

from clipforge.config import ModelConfig
from clipforge.model import CLIP
from clipforge.registry import get_config


def resolve_config(name_or_config: str | ModelConfig | dict, **changes: Any) -> ModelConfig:
    """A registered name, a ModelConfig or its dict form, with optional field changes.

    ``changes`` are ModelConfig fields; ``vision`` / ``text`` may be dicts of their fields, e.g.
    ``resolve_config("demo-rn", text={"vocab_size": 1024})``.
    """
    if isinstance(name_or_config, ModelConfig):
        config = name_or_config
    elif isinstance(name_or_config, dict):
        config = ModelConfig.from_dict(name_or_config)
    else:
        config = get_config(name_or_config)
    return config.replace(**changes) if changes else config


def create_model(
    name_or_config: str | ModelConfig | dict,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **changes: Any,
) -> CLIP:
    """A randomly initialised CLIP model (OpenAI's initialisation), in eval mode."""
    model = CLIP(resolve_config(name_or_config, **changes))
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval()
