"""Named model configs: OpenAI's nine released models, open_clip's names for them, and small CPU configs.

Names follow OpenAI's ``clip.available_models()`` (``RN50`` ... ``ViT-L/14@336px``, all QuickGELU).
open_clip's dashed names are aliases: ``ViT-B-32-quickgelu`` is OpenAI's ViT-B/32, while a dashed
name without the suffix (``ViT-B-32``) is the GELU variant, as in open_clip. For the ResNets,
open_clip's names coincide with OpenAI's, and OpenAI's meaning (QuickGELU) wins.
"""

from __future__ import annotations

import dataclasses

from clipforge.config import ModelConfig, TextConfig, VisionConfig

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


def _resnet(embed: int, image: int, layers: tuple[int, int, int, int], width: int, text_width: int) -> ModelConfig:
    return ModelConfig(embed, VisionConfig(image, layers, width, patch_size=None), TextConfig(width=text_width))


def _vit(embed: int, image: int, layers: int, width: int, patch: int, text_width: int) -> ModelConfig:
    return ModelConfig(embed, VisionConfig(image, layers, width, patch_size=patch), TextConfig(width=text_width))


# OpenAI's released architectures (clip/model.py build_model; shapes checked against the reference).
_OPENAI = {
    "RN50": ("RN50", _resnet(1024, 224, (3, 4, 6, 3), 64, 512)),
    "RN101": ("RN101", _resnet(512, 224, (3, 4, 23, 3), 64, 512)),
    "RN50x4": ("RN50x4", _resnet(640, 288, (4, 6, 10, 6), 80, 640)),
    "RN50x16": ("RN50x16", _resnet(768, 384, (6, 8, 18, 8), 96, 768)),
    "RN50x64": ("RN50x64", _resnet(1024, 448, (3, 15, 36, 10), 128, 1024)),
    "ViT-B/32": ("ViT-B-32", _vit(512, 224, 12, 768, 32, 512)),
    "ViT-B/16": ("ViT-B-16", _vit(512, 224, 12, 768, 16, 512)),
    "ViT-L/14": ("ViT-L-14", _vit(768, 224, 24, 1024, 14, 768)),
    "ViT-L/14@336px": ("ViT-L-14-336", _vit(768, 336, 24, 1024, 14, 768)),
}


OPENAI_MODELS: tuple[str, ...] = tuple(_OPENAI)


def _gelu(config: ModelConfig) -> ModelConfig:
    return config.replace(vision={"act": "gelu"}, text={"act": "gelu"})


# OpenAI's nine first, in the order of OpenAI's clip.available_models(); then the GELU variants.
for _name, (_dashed, _config) in _OPENAI.items():
    register_model(_name, _config, f"OpenAI {_name} (QuickGELU)", aliases=(f"{_dashed}-quickgelu",))
for _name, (_dashed, _config) in _OPENAI.items():
    if _dashed != _name:  # ViTs: open_clip's plain dashed name is the GELU variant
        register_model(_dashed, _gelu(_config), f"{_name} shapes with GELU (open_clip's {_dashed})")

# Small configs that train on a CPU. The demo configs use a short context: synthetic captions are short.
register_model(
    "tiny-vit",
    ModelConfig(64, VisionConfig(32, 2, 128, patch_size=8), TextConfig(width=128, layers=2)),
    "tiny ViT of the parity fixture: 32 px, patch 8, width 128, 2 layers",
)
register_model(
    "tiny-rn",
    ModelConfig(64, VisionConfig(64, (1, 1, 1, 1), 16, patch_size=None), TextConfig(width=64, layers=2)),
    "tiny ModifiedResNet of the parity fixture: 64 px, layers 1-1-1-1, width 16",
)
register_model(
    "demo-rn",
    ModelConfig(128, VisionConfig(64, (1, 1, 1, 1), 32, patch_size=None),
                TextConfig(context_length=32, vocab_size=2048, width=128, heads=2, layers=3)),
    "the demo model: ModifiedResNet 64 px, width 32; text width 128, 3 layers, context 32",
)
register_model(
    "demo-rn16",
    ModelConfig(128, VisionConfig(64, (1, 1, 1, 1), 16, patch_size=None),
                TextConfig(context_length=32, vocab_size=2048, width=64, heads=2, layers=2)),
    "the demo recipe's model: ModifiedResNet 64 px, width 16; text width 64, 2 layers, context 32",
)
register_model(
    "demo-vit",
    ModelConfig(128, VisionConfig(64, 4, 128, patch_size=8, heads=2),
                TextConfig(context_length=32, vocab_size=2048, width=128, heads=2, layers=3)),
    "a small ViT for CPU runs: 64 px, patch 8, width 128, 4 layers",
)

del _name, _dashed, _config
