"""SigLIP (Zhai et al. 2023) and SigLIP 2 (Tschannen et al. 2025) architectures, under open_clip's names.

Shapes as in open_clip 3.3's ``model_configs/ViT-*-SigLIP*.json`` (timm's ``vit_*_siglip_*`` image towers)
and transformers' ``SiglipConfig`` of the released checkpoints: B/16 is width 768, 12 layers, 12 heads;
L/16 width 1024, 24 layers, 16 heads; So400m width 1152, 27 layers, 16 heads, MLP 4304. The text tower
has the image tower's width, depth and heads; the joint space has the image tower's width (the image tower
has no projection). SigLIP's vocabulary is a 32,000-piece SentencePiece model (English C4), SigLIP 2's
Gemma's 256,000; the context is 64 tokens (16 for SigLIP So400m/14 at 224 px). The weights are
transformers' ``google/siglip-*`` / ``google/siglip2-*`` (see ``describe``), e.g.
``clipforge.load("hf-hub:google/siglip-base-patch16-224")``.
"""

from __future__ import annotations

import math

from clipforge.config import ModelConfig, TextConfig, VisionConfig
from clipforge.families.siglip import ACT, SIGLIP_PREPROCESS, mlp_ratio
from clipforge.registry import register_model

# Zhai et al. 2023, section 3: the log temperature starts at log 10 and the bias at -10.
INIT_LOGIT_SCALE, INIT_LOGIT_BIAS = math.log(10.0), -10.0

_SIZES = {  # name: (width, layers, heads, mlp hidden)
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "SO400M": (1152, 27, 16, 4304),
}
_HF_SIZE = {"B": "base", "L": "large", "SO400M": "so400m"}


def siglip_config(size: str, patch: int, image_size: int, vocab_size: int, context_length: int = 64) -> ModelConfig:
    width, layers, heads, hidden = _SIZES[size]
    ratio = mlp_ratio(width, hidden)
    # The image family's head rule gives 12, 16, 16 (So400m: 16 of 72); TextConfig's is width // 64.
    vision = VisionConfig(image_size, layers, width, patch_size=patch, mlp_ratio=ratio, act=ACT, kind="siglip")
    text = TextConfig(context_length, vocab_size, width, heads=None if heads == width // 64 else heads, layers=layers,
                      mlp_ratio=ratio, act=ACT, kind="siglip")
    return ModelConfig(width, vision, text, init_logit_scale=INIT_LOGIT_SCALE, preprocess=SIGLIP_PREPROCESS,
                       init_logit_bias=INIT_LOGIT_BIAS)


def _register(version: str, size: str, patch: int, image_size: int, default_size: int, vocab_size: int,
              context_length: int = 64) -> None:
    suffix = "SigLIP" if version == "1" else "SigLIP2"
    name = f"ViT-{size}-{patch}-{suffix}" + ("" if image_size == default_size else f"-{image_size}")
    hub = f"google/{'siglip' if version == '1' else 'siglip2'}-{_HF_SIZE[size]}-patch{patch}-{image_size}"
    paper = "SigLIP (Zhai et al. 2023)" if version == "1" else "SigLIP 2 (Tschannen et al. 2025)"
    register_model(name, siglip_config(size, patch, image_size, vocab_size, context_length),
                   f"{paper} {size}/{patch} at {image_size} px; weights: hf-hub:{hub}")


# SigLIP: open_clip's ViT-*-SigLIP configs (the first size of each model is its name without a suffix).
for _size, _patch, _images, _first in (("B", 16, (224, 256, 384, 512), 224), ("L", 16, (256, 384), None),
                                       ("SO400M", 14, (224, 384), 224)):
    for _image in _images:
        # So400m/14 at 224 px was trained with 16 text tokens (open_clip's ViT-SO400M-14-SigLIP).
        _register("1", _size, _patch, _image, _first, 32000, 16 if (_size, _image) == ("SO400M", 224) else 64)

# SigLIP 2 (fixed resolution; transformers holds it in SiglipModel): open_clip's ViT-*-SigLIP2 configs.
# So400m/14 at 384 px is transformers' google/siglip2-so400m-patch14-384; open_clip names it at 378 px
# (the same 27×27 patches; a 384 px input leaves its last 6 pixel rows and columns unseen).
for _size, _patch, _images, _first in (("B", 16, (224, 256, 384, 512), 224), ("L", 16, (256, 384, 512), None),
                                       ("SO400M", 14, (224, 378, 384), 224), ("SO400M", 16, (256, 384, 512), None)):
    for _image in _images:
        _register("2", _size, _patch, _image, _first, 256000)

# A small SigLIP that trains on a CPU (tests and the SigLIP demo): 64 px, patch 8, width 128.
register_model(
    "demo-siglip",
    ModelConfig(128, VisionConfig(64, 4, 128, patch_size=8, heads=2, act=ACT, kind="siglip"),
                TextConfig(context_length=32, vocab_size=2048, width=128, heads=2, layers=3, act=ACT, kind="siglip"),
                init_logit_scale=INIT_LOGIT_SCALE, preprocess=SIGLIP_PREPROCESS, init_logit_bias=INIT_LOGIT_BIAS),
    "a small SigLIP for CPU runs: 64 px, patch 8, width 128, 4 layers; text width 128, 3 layers, context 32",
)
register_model(
    "tiny-siglip",
    ModelConfig(64, VisionConfig(32, 2, 64, patch_size=8, act=ACT, kind="siglip"),
                TextConfig(context_length=16, vocab_size=1000, width=64, layers=2, act=ACT, kind="siglip"),
                init_logit_scale=INIT_LOGIT_SCALE, preprocess=SIGLIP_PREPROCESS, init_logit_bias=INIT_LOGIT_BIAS),
    "a tiny SigLIP for tests: 32 px, patch 8, width 64, 2 layers; text context 16, vocabulary 1000",
)

del _size, _patch, _images, _first, _image
