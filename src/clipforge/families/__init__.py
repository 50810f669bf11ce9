"""Model families: what the rest of clipforge needs to know about each kind of tower, in one place.

A tower config names its family (``VisionConfig.kind``, ``TextConfig.kind``). The family builds the
tower and answers every question other code would otherwise ask by inspecting modules:

* parameter groups, input to output, for locking (LiT) and the paper's Adam β2/ε;
* the blocks FSDP shards and activation checkpointing wraps;
* how a released state_dict's shapes map back to its config, and how its positional embedding is
  resized for another input resolution;
* the representation before the projection (linear probes), the work per item (CPU inference
  pieces), whether token trimming is exact (text), whether HF's ``CLIPModel`` can hold it.

Adding a family is one module that defines a :class:`VisionFamily` or :class:`TextFamily` and calls
:func:`register`; nothing else changes (tests/test_families.py adds a toy one).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

Groups = list[list[nn.Module | nn.Parameter]]
State = dict[str, torch.Tensor]


class Family:
    """What every tower family declares. ``kind`` is the config's name for it."""

    kind: str = ""
    tower: str = ""  # "vision" or "text"
    title: str = ""  # for people: "ViT", "ModifiedResNet", ...
    hf_model: str | None = None  # the transformers model class that holds this tower, if any

    def layer_groups(self, tower: nn.Module) -> Groups:
        """The tower's parameters in order, input to output: stem, one group per block, head."""
        raise NotImplementedError

    def shard_units(self, tower: nn.Module) -> list[nn.Module]:
        """The blocks FSDP2 shards one by one."""
        raise NotImplementedError

    def set_grad_checkpointing(self, tower: nn.Module, enable: bool) -> None:
        raise NotImplementedError

    def describe(self, config: Any) -> str:
        return self.title

    def rows_per_item(self, config: Any, x: torch.Tensor) -> int:
        """Activation rows one input item makes (sizes CPU inference pieces)."""
        raise NotImplementedError

    inference_chunk_rows: int | None = 1024  # rows per CPU inference piece (clipforge.fastpath.pieces)


class VisionFamily(Family):
    tower = "vision"
    adam: tuple[float, float] = (0.98, 1e-6)  # the paper's (β2, ε) for training this family (Appendix F)
    preprocess: Any = None  # the PreprocessConfig of a checkpoint whose config is inferred (None: OpenAI's)

    def build(self, config: Any, output_dim: int) -> nn.Module:
        raise NotImplementedError

    def default_heads(self, config: Any) -> int:
        raise NotImplementedError

    def matches(self, state: State) -> bool:
        """Whether an OpenAI-layout state_dict holds this family's image tower (under ``visual.``)."""
        raise NotImplementedError

    def infer_config(self, state: State, act: str) -> Any:
        """The VisionConfig of a state_dict that ``matches``, read from its shapes."""
        raise NotImplementedError

    def resize_positions(self, state: State, config: Any, image_size: int) -> Any:
        """Interpolate the positional embedding in ``state`` (in place) for ``image_size``; the new config."""
        raise NotImplementedError

    def check_image_size(self, config: Any, image_size: int) -> None:
        """Raise ValueError, saying why, when this tower cannot take ``image_size`` (a recipe is checked
        with it before anything is built; ``resize_positions`` checks the same)."""

    def probe_module(self, tower: nn.Module) -> nn.Module | None:
        """The module whose output is the representation before the projection (None: use the features)."""
        return None


class TextFamily(Family):
    tower = "text"
    trims_exactly: bool = False  # cutting a batch after its longest caption leaves every output unchanged

    def attach(self, clip: nn.Module, config: Any, output_dim: int) -> None:
        """Build the tower's parameters into ``clip`` (where its checkpoints keep them)."""
        raise NotImplementedError

    def encode(self, clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids [N, L] → projected features [N, embed_dim]."""
        raise NotImplementedError

    def tower_module(self, clip: nn.Module) -> nn.Module:
        """The module that holds the tower's parameters (``clip`` itself when they sit at its top level)."""
        return clip

    def matches(self, state: State) -> bool:
        """Whether an OpenAI-layout state_dict holds this family's text tower."""
        return False

    def infer_config(self, state: State, act: str) -> Any:
        raise NotImplementedError

    def embed_dim(self, state: State) -> int:
        """The joint embedding dimension, read from the tower's output map in a state_dict that ``matches``."""
        raise NotImplementedError


_FAMILIES: dict[tuple[str, str], Family] = {}


def register(family: Family) -> Family:
    key = (family.tower, family.kind)
    if key in _FAMILIES:
        raise ValueError(f"{family.tower} family {family.kind!r} is already registered")
    _FAMILIES[key] = family
    return family


def vision_family(kind: str) -> VisionFamily:
    return _get("vision", kind)  # type: ignore[return-value]


def text_family(kind: str) -> TextFamily:
    return _get("text", kind)  # type: ignore[return-value]


def _get(tower: str, kind: str) -> Family:
    try:
        return _FAMILIES[(tower, kind)]
    except KeyError:
        known = sorted(k for t, k in _FAMILIES if t == tower)
        raise ValueError(f"unknown {tower} tower kind {kind!r}; registered: {', '.join(known)}") from None


def families(tower: str) -> list[Family]:
    """The registered families of one tower type, in registration order."""
    return [f for (t, _), f in _FAMILIES.items() if t == tower]


def of(config: Any) -> Family:
    """The family of a model config: ``of(model_config.vision)`` or ``of(model_config.text)``."""
    from clipforge.config import TextConfig

    return text_family(config.kind) if isinstance(config, TextConfig) else vision_family(config.kind)


def infer_vision(state: State, act: str) -> Any:
    """The VisionConfig of an OpenAI-layout state_dict, from the first family whose tower it holds."""
    for family in families("vision"):
        if family.matches(state):  # type: ignore[attr-defined]
            return family.infer_config(state, act)  # type: ignore[attr-defined]
    raise ValueError("no registered image tower family matches the visual.* keys")


def infer_text(state: State) -> TextFamily:
    """The text family whose tower an OpenAI-layout state_dict holds (the first that matches)."""
    for family in families("text"):
        if family.matches(state):  # type: ignore[attr-defined]
            return family  # type: ignore[return-value]
    raise ValueError("no registered text tower family matches the state_dict's keys")


def shard_units(model: nn.Module) -> list[nn.Module]:
    """FSDP2 units of every CLIP model inside ``model`` (e.g. a training wrapper), both towers."""
    from clipforge.model import CLIP

    units: list[nn.Module] = []
    for clip in (m for m in model.modules() if isinstance(m, CLIP)):
        units += of(clip.config.vision).shard_units(clip.visual)
        text = of(clip.config.text)
        units += text.shard_units(text.tower_module(clip))
    return units


# The built-in families register themselves on import.
from clipforge.families import resnet, siglip, text, vit  # noqa: E402,F401
