"""Model configuration: small frozen dataclasses, saved as JSON beside every checkpoint.

Each tower config names its family (``kind``); the family (``clipforge.families``) builds the tower
and tells the rest of the code what it needs to know about it. Fields a family does not use are
ignored by it (``patch_size`` by the ModifiedResNet, ``layers`` is a 4-tuple there).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Paper, section 2.5: the temperature is initialised to 0.07 and stored as a log-parameterised scale.
INIT_LOGIT_SCALE = math.log(1 / 0.07)
# Paper, section 2.5: "clipped to prevent scaling the logits by more than 100".
MAX_LOGIT_SCALE = math.log(100.0)
# Dataset statistics OpenAI used for all released models (clip/clip.py _transform).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class VisionConfig:
    """Image tower. ``kind`` is its family: "vit" (``layers`` an int), "resnet" (a 4-tuple of block counts) or
    "siglip" (SigLIP's ViT: no class token, attention-pooling head, no projection)."""

    image_size: int = 224
    layers: int | tuple[int, int, int, int] = 12
    width: int = 768
    patch_size: int | None = 32  # ViT patch size (unused by the ModifiedResNet)
    heads: int | None = None  # None: the family's rule (OpenAI's: width // 64 for ViT, width * 32 // 64 for the attention pool)
    mlp_ratio: float = 4.0
    act: str = "quick_gelu"  # "quick_gelu" (OpenAI's weights), "gelu" or "gelu_tanh" (SigLIP's)
    patch_dropout: float = 0.0  # FLIP: fraction of patch tokens dropped in training (ViT only)
    kind: str = "vit"

    @property
    def num_heads(self) -> int:
        """``heads``, or the family's default rule for this width."""
        from clipforge import families

        return families.of(self).default_heads(self)


@dataclass(frozen=True)
class TextConfig:
    """Text tower. ``kind`` "causal": OpenAI's causal Transformer read out at the end-of-text token;
    "siglip": SigLIP's bidirectional Transformer read out at the last position, with a linear head."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int | None = None  # None: width // 64
    layers: int = 12
    mlp_ratio: float = 4.0
    act: str = "quick_gelu"
    kind: str = "causal"

    @property
    def num_heads(self) -> int:
        return self.heads if self.heads is not None else max(1, self.width // 64)


@dataclass(frozen=True)
class PreprocessConfig:
    """What the weights expect of an image: normalisation statistics and how it is resized.

    ``resize``: "shortest" (resize the shorter side, then center crop: OpenAI's) or "squash" (resize
    both sides to the square, no crop). ``interpolation``: "bicubic" (OpenAI's) or "bilinear".
    ``to_rgb``: when a grayscale, palette or transparent image becomes RGB: "last" (after the resize,
    PIL's conversion: OpenAI's and open_clip's) or "first_white" (before it, transparency composited
    on white: transformers' image processors, the reference of the SigLIP weights).
    """

    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    resize: str = "shortest"
    interpolation: str = "bicubic"
    to_rgb: str = "last"


@dataclass(frozen=True)
class ModelConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    init_logit_scale: float = INIT_LOGIT_SCALE
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    # A learned logit bias (SigLIP's, Zhai et al. 2023: logits = exp(t)·cos + b); None: the model has none.
    init_logit_bias: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        data = dict(data)
        vision = dict(data.pop("vision", {}))
        text = dict(data.pop("text", {}))
        preprocess = {k: tuple(v) if isinstance(v, list) else v for k, v in data.pop("preprocess", {}).items()}
        if isinstance(vision.get("layers"), list):
            vision["layers"] = tuple(vision["layers"])
        if "kind" not in vision:  # config.json written before families had names: a ResNet had no patch size
            vision["kind"] = "resnet" if "patch_size" in vision and vision["patch_size"] is None else "vit"
        _check_keys(VisionConfig, vision, "vision")
        _check_keys(TextConfig, text, "text")
        _check_keys(PreprocessConfig, preprocess, "preprocess")
        _check_keys(cls, data, "model")
        return cls(vision=VisionConfig(**vision), text=TextConfig(**text), preprocess=PreprocessConfig(**preprocess),
                   **data)

    def replace(self, **changes: Any) -> "ModelConfig":
        """Copy with changes; ``vision`` / ``text`` / ``preprocess`` may be dicts of field changes."""
        for part in ("vision", "text", "preprocess"):
            if isinstance(changes.get(part), dict):
                changes[part] = dataclasses.replace(getattr(self, part), **changes[part])
        return dataclasses.replace(self, **changes)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _check_keys(cls: type, data: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {where} config key(s) {unknown}; known: {sorted(known)}")
