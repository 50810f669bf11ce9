"""The public entry points: ``load`` a model with its preprocessing and tokenizer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from clipforge.checkpoint import (
    CheckpointError,
    infer_config,
    read_directory_config,
    read_state_dict,
    resize_positional_embedding,
)
from clipforge.config import ModelConfig
from clipforge.factory import resolve_config
from clipforge.model import CLIP
from clipforge.registry import available_models, canonical_name
from clipforge.transforms import eval_transform


def load(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    model: str | ModelConfig | None = None,
    image_size: int | None = None,
    download_root: str | os.PathLike | None = None,
) -> tuple[CLIP, Callable[[Any], torch.Tensor], Any]:
    """Load a checkpoint → ``(model, preprocess, tokenizer)``, the model in eval mode.

    ``name_or_path`` is a checkpoint file or directory in any supported format, or one of OpenAI's
    model names (downloaded into the cache on first use, checksum verified). The architecture comes
    from the directory's config.json, else ``model`` (a registered name or config: needed for GELU
    checkpoints, whose shapes equal the QuickGELU ones), else it is inferred from the shapes.
    ``image_size`` interpolates the positional embedding to another input resolution.
    """
    path = Path(name_or_path)
    if not path.exists() and _is_model_name(str(name_or_path)):
        from clipforge.hub import download_openai

        path = download_openai(str(name_or_path), download_root)
    state = read_state_dict(path)
    config = (read_directory_config(path) if path.is_dir() else None) or (
        resolve_config(model) if model is not None else infer_config(state)
    )
    if image_size is not None and image_size != config.vision.image_size:
        resize_positional_embedding(state, image_size, config.vision.patch_size)
        config = config.replace(vision={"image_size": image_size})
    clip = CLIP(config)
    try:
        clip.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the architecture {config}: {err}") from err
    clip = clip.to(device).eval()
    return clip, eval_transform(config.vision.image_size), _tokenizer_for(path, config)


def _is_model_name(name: str) -> bool:
    try:
        canonical_name(name)
    except KeyError:
        return False
    return True


def _tokenizer_for(path: Path, config: ModelConfig):
    """The tokenizer saved with the model, else OpenAI's (when the vocabulary sizes agree)."""
    from clipforge.tokenizer import Tokenizer

    if path.is_dir() and Tokenizer.is_saved_in(path):
        return Tokenizer.from_directory(path)
    if config.text.vocab_size != 49408:
        raise CheckpointError(
            f"{path}: the model has a vocabulary of {config.text.vocab_size} tokens but no tokenizer files "
            "are saved with it, and OpenAI's vocabulary has 49408"
        )
    try:
        return Tokenizer.openai(context_length=config.text.context_length)
    except FileNotFoundError:
        return None  # the model still loads; tokenize() explains how to get the vocabulary


__all__ = ["load", "available_models"]
