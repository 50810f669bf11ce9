"""Checkpoint directory layouts: how a directory is recognised, which weight files it may hold
(preferred first) and where its architecture comes from.

Tried in order (the first that matches wins):

* ``open_clip``: open_clip's Hub layout, ``open_clip_config.json`` + ``open_clip_model.safetensors``
  or ``open_clip_pytorch_model.bin`` (LAION's repositories also hold an HF copy; open_clip's is used);
* ``hf``: transformers' ``CLIPModel``, ``SiglipModel`` or ``Siglip2Model`` (``config.json`` with its
  ``model_type``, which ``clipforge.hf.config_from_hf`` maps), single-file or sharded safetensors, or
  ``pytorch_model.bin``;
* ``clipforge``: this project's own (``config.json`` + ``model.safetensors``), and any directory of
  bare weights (the architecture is then inferred from the shapes).

A new layout is one :func:`register` call; the Hub resolver
(``clipforge.hub.download_hub``) asks the matching layout which weight file to fetch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from clipforge.config import ModelConfig

CONFIG_NAME = "config.json"
OPENCLIP_CONFIG = "open_clip_config.json"


@dataclass(frozen=True)
class Layout:
    name: str
    matches: Callable[[Path], bool]
    weights: tuple[str, ...]  # weight files, preferred first; a "*.index.json" lists safetensors shards
    config_file: str  # the file the architecture is read from (named in errors)
    read_config: Callable[[Path], ModelConfig | None]  # None: infer the architecture from the weights


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _hf_config(directory: Path) -> dict[str, Any] | None:
    path = directory / CONFIG_NAME
    try:
        data = _json(path) if path.is_file() else None
    except (OSError, ValueError):  # unreadable: the catch-all layout reads it again and reports the error
        return None
    return data if isinstance(data, dict) else None


def _is_hf(directory: Path) -> bool:
    data = _hf_config(directory)
    return data is not None and ("model_type" in data or "text_config" in data)


def _read_hf(directory: Path) -> ModelConfig:
    from clipforge.hf import config_from_hf

    return config_from_hf(_hf_config(directory))


def _read_openclip(directory: Path) -> ModelConfig:
    from clipforge.openclip_format import config_from_openclip

    return config_from_openclip(_json(directory / OPENCLIP_CONFIG))


def _read_clipforge(directory: Path) -> ModelConfig | None:
    path = directory / CONFIG_NAME
    return ModelConfig.load(path) if path.is_file() else None


OPEN_CLIP = Layout("open_clip", lambda d: (d / OPENCLIP_CONFIG).is_file(),
                   ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"), OPENCLIP_CONFIG, _read_openclip)
_DEFAULT = Layout("clipforge", lambda d: True, ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"),
                  CONFIG_NAME, _read_clipforge)
_LAYOUTS: list[Layout] = [
    OPEN_CLIP,
    Layout("hf", _is_hf, ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"),
           CONFIG_NAME, _read_hf),
    _DEFAULT,
]


def register(layout: Layout) -> Layout:
    """Add a layout, tried before the catch-all ``clipforge`` one."""
    if any(existing.name == layout.name for existing in _LAYOUTS):
        raise ValueError(f"directory layout {layout.name!r} is already registered")
    _LAYOUTS.insert(len(_LAYOUTS) - 1, layout)
    return layout


def of(directory: Path) -> Layout:
    """The layout of a checkpoint directory (the catch-all ``clipforge`` layout when none other matches)."""
    return next(layout for layout in _LAYOUTS if layout.matches(directory))


def weights_file(directory: Path, layout: Layout | None = None) -> Path | None:
    """The directory's preferred weight file that exists, or None."""
    for name in (layout or of(directory)).weights:
        if (directory / name).is_file():
            return directory / name
    return None
