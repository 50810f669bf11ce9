"""Named model configs. The names themselves live in ``clipforge.zoo`` (one module per source):

* ``zoo.openai``: OpenAI's nine released models (``clip.available_models()`` names, QuickGELU) and
  open_clip's names for them; a dashed name without ``-quickgelu`` (``ViT-B-32``) is the GELU
  variant, as in open_clip. For the ResNets open_clip's names coincide with OpenAI's, and OpenAI's
  meaning (QuickGELU) wins.
* ``zoo.openclip``: open_clip's ViT zoo past OpenAI's sizes (ViT-B-32-256, ViT-B-16-plus-240, ViT-H-14,
  ViT-g-14, ViT-bigG-14 ...), with open_clip's names; pretrained tags for all of them: ``zoo.pretrained``.
* ``zoo.small``: small configs that train on a CPU (tests, the demo).
* ``zoo.siglip``: SigLIP and SigLIP 2 (open_clip's names), and small SigLIP configs.
"""

from __future__ import annotations

import dataclasses

from clipforge.config import ModelConfig

_CONFIGS: dict[str, ModelConfig] = {}
_ALIASES: dict[str, str] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str, config: ModelConfig, description: str = "", aliases: tuple[str, ...] = ()) -> None:
    if name in _CONFIGS or name in _ALIASES:
        raise ValueError(f"model name {name!r} is already registered")
    _CONFIGS[name], _DESCRIPTIONS[name] = config, description
    for alias in aliases:
        _ALIASES[alias] = name


def available_models(aliases: bool = False) -> list[str]:
    """Registered model names (OpenAI's nine first); with ``aliases=True`` also their other names."""
    names = list(_CONFIGS)
    return names + sorted(_ALIASES) if aliases else names


def canonical_name(name: str) -> str:
    if name in _CONFIGS:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    raise KeyError(f"unknown model {name!r}; available: {', '.join(available_models())}")


def aliases_of(name: str) -> list[str]:
    """The other names of a registered model (e.g. ``ViT-B-32-quickgelu`` for ``ViT-B/32``)."""
    canonical = canonical_name(name)
    return sorted(alias for alias, target in _ALIASES.items() if target == canonical)


def get_config(name: str) -> ModelConfig:
    return _CONFIGS[canonical_name(name)]


def describe(name: str) -> str:
    return _DESCRIPTIONS[canonical_name(name)]


OPENAI_MODELS: tuple[str, ...] = (
    "RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px",
)

# The built-in names register themselves, OpenAI's nine first, SigLIP's after the small configs.
from clipforge.zoo import openai as _openai_zoo, openclip as _openclip_zoo, small as _small_zoo  # noqa: E402,F401,I001
from clipforge.zoo import siglip as _siglip_zoo  # noqa: E402,F401
