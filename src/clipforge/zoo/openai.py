"""OpenAI's nine released architectures (clip/model.py build_model; shapes checked against the reference),
their open_clip names, and the GELU variants open_clip names without the ``-quickgelu`` suffix."""

from __future__ import annotations

from clipforge.config import ModelConfig, TextConfig, VisionConfig
from clipforge.registry import OPENAI_MODELS, register_model


def _resnet(embed: int, image: int, layers: tuple[int, int, int, int], width: int, text_width: int) -> ModelConfig:
    return ModelConfig(embed, VisionConfig(image, layers, width, patch_size=None, kind="resnet"), TextConfig(width=text_width))


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

assert tuple(_OPENAI) == OPENAI_MODELS


def _gelu(config: ModelConfig) -> ModelConfig:
    return config.replace(vision={"act": "gelu"}, text={"act": "gelu"})


# OpenAI's nine first, in the order of OpenAI's clip.available_models(); then the GELU variants.
for _name, (_dashed, _config) in _OPENAI.items():
    register_model(_name, _config, f"OpenAI {_name} (QuickGELU)", aliases=(f"{_dashed}-quickgelu",))
for _name, (_dashed, _config) in _OPENAI.items():
    if _dashed != _name:  # ViTs: open_clip's plain dashed name is the GELU variant
        register_model(_dashed, _gelu(_config), f"{_name} shapes with GELU (open_clip's {_dashed})")


del _name, _dashed, _config
