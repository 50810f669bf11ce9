"""Model configuration: three small frozen dataclasses, saved as JSON beside every checkpoint."""

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


@dataclass(frozen=True)
class VisionConfig:
    """Image tower. ``layers`` is an int for a ViT, a 4-tuple of block counts for a ModifiedResNet."""

    image_size: int = 224
    layers: int | tuple[int, int, int, int] = 12
    width: int = 768
    patch_size: int | None = 32  # None selects the ModifiedResNet
    heads: int | None = None  # None: OpenAI's rule (width // 64 for ViT, width * 32 // 64 for the attention pool)
    mlp_ratio: float = 4.0
    act: str = "quick_gelu"  # "quick_gelu" (OpenAI's weights) or "gelu"
    patch_dropout: float = 0.0  # FLIP: fraction of patch tokens dropped in training (ViT only)

    @property
    def is_resnet(self) -> bool:
        return self.patch_size is None

    @property
    def num_heads(self) -> int:
        if self.heads is not None:
            return self.heads
        return self.width * 32 // 64 if self.is_resnet else self.width // 64


@dataclass(frozen=True)
class TextConfig:
    """Causal text Transformer."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int | None = None  # None: width // 64
    layers: int = 12
    mlp_ratio: float = 4.0
    act: str = "quick_gelu"

    @property
    def num_heads(self) -> int:
        return self.heads if self.heads is not None else max(1, self.width // 64)


@dataclass(frozen=True)
class ModelConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    init_logit_scale: float = INIT_LOGIT_SCALE

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        data = dict(data)
        vision = dict(data.pop("vision", {}))
        text = dict(data.pop("text", {}))
        if isinstance(vision.get("layers"), list):
            vision["layers"] = tuple(vision["layers"])
        _check_keys(VisionConfig, vision, "vision")
        _check_keys(TextConfig, text, "text")
        _check_keys(cls, data, "model")
        return cls(vision=VisionConfig(**vision), text=TextConfig(**text), **data)

    def replace(self, **changes: Any) -> "ModelConfig":
        """Copy with changes; ``vision`` / ``text`` may be dicts of field changes."""
        for part in ("vision", "text"):
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
