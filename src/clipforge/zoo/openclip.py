"""open_clip's ViT zoo past OpenAI's sizes, under open_clip's names: the architectures of the open
checkpoints (LAION-2B, DataComp, DFN, MetaCLIP; their tags are in ``zoo.pretrained``).

Each config is open_clip 3.3's ``model_configs/<name>.json``; parameter counts, every state_dict key
and shape, and the outputs of reduced-size copies are checked against open_clip itself
(tests/test_openclip_parity.py, fixtures from tests/fixtures/make_openclip_fixtures.py).
open_clip sets a tower's heads by ``head_width`` (64 unless given), so ViT-H, -g and -bigG, whose
heads are 80, 88 and 104 wide, name their head count; text towers use 64-wide heads throughout.
A name without ``-quickgelu`` is the GELU variant, as in open_clip.
"""

from __future__ import annotations

from clipforge.config import ModelConfig, PreprocessConfig, TextConfig, VisionConfig
from clipforge.registry import register_model

# DFN-5B's ViT-H/14 at 378 px, the only weights of this shape, were trained on images squashed to
# the square rather than cropped (open_clip pretrained.py: resize_mode="squash" for apple/DFN5B-*).
_SQUASH = PreprocessConfig(resize="squash")


def _vit(embed: int, image: int, layers: int, width: int, patch: int, text_width: int, text_layers: int = 12,
         heads: int | None = None, mlp_ratio: float = 4.0, preprocess: PreprocessConfig = PreprocessConfig()) -> ModelConfig:
    vision = VisionConfig(image, layers, width, patch_size=patch, heads=heads, mlp_ratio=mlp_ratio, act="gelu")
    return ModelConfig(embed, vision, TextConfig(width=text_width, layers=text_layers, act="gelu"), preprocess=preprocess)


def _quick(config: ModelConfig) -> ModelConfig:
    return config.replace(vision={"act": "quick_gelu"}, text={"act": "quick_gelu"})


# name: (config, description). Widths/heads/MLP ratios from open_clip's JSON files (head_width → heads).
_ZOO = {
    "ViT-B-32-256": (_vit(512, 256, 12, 768, 32, 512), "ViT-B/32 at 256 px (DataComp)"),
    "ViT-B-16-plus-240": (_vit(640, 240, 12, 896, 16, 640), "ViT-B/16+ at 240 px: vision width 896, text 640 (LAION-400M)"),
    "ViT-H-14": (_vit(1024, 224, 32, 1280, 14, 1024, 24, heads=16), "ViT-H/14, 80-wide heads; text width 1024, 24 layers"),
    "ViT-H-14-378": (_vit(1024, 378, 32, 1280, 14, 1024, 24, heads=16, preprocess=_SQUASH),
                     "ViT-H/14 at 378 px (squashed input, as DFN-5B's weights)"),
    "ViT-g-14": (_vit(1024, 224, 40, 1408, 14, 1024, 24, heads=16, mlp_ratio=4.3637),
                 "ViT-g/14, 88-wide heads, MLP 6144 (LAION-2B)"),
    "ViT-bigG-14": (_vit(1280, 224, 48, 1664, 14, 1280, 32, heads=16, mlp_ratio=4.9231),
                    "ViT-bigG/14, 104-wide heads, MLP 8192; text width 1280, 32 layers"),
}
# The shapes open_clip also names with QuickGELU (for DFN's and MetaCLIP's weights).
_QUICKGELU = ("ViT-H-14", "ViT-H-14-378", "ViT-bigG-14")

for _name, (_config, _text) in _ZOO.items():
    register_model(_name, _config, f"{_text} (GELU; open_clip's {_name})")
    if _name in _QUICKGELU:
        register_model(f"{_name}-quickgelu", _quick(_config), f"{_text} (QuickGELU)")

del _name, _config, _text
