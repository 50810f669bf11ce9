"""The public entry points: ``load`` a model with its preprocessing and tokenizer, ``save`` one."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from clipforge.checkpoint import (
    CheckpointError,
    infer_config,
    load_weights,
    read_directory_config,
    read_state_dict,
    resize_positional_embedding,
    save_directory,
)
from clipforge.config import ModelConfig
from clipforge.factory import resolve_config
from clipforge.model import CLIP
from clipforge.registry import available_models, canonical_name
from clipforge.transforms import preprocess_for

OPENAI_VOCAB_SIZE = 49408


def load(
    name_or_path: str | os.PathLike,
    *,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    model: str | ModelConfig | None = None,
    image_size: int | None = None,
    download_root: str | os.PathLike | None = None,
) -> tuple[CLIP, Callable[[Any], torch.Tensor], Any]:
    """Load a checkpoint → ``(model, preprocess, tokenizer)``, the model in eval mode.

    ``name_or_path`` is a checkpoint file or directory in any supported format, one of OpenAI's
    model names, a registered architecture with ``pretrained`` naming released weights (a tag such as
    "laion2b_s32b_b79k"; ``clipforge models --pretrained`` lists them), or ``"hf-hub:ORG/NAME"`` (a
    Hugging Face Hub repository in open_clip's or transformers' layout). Downloads go into the cache
    on first use, checksums verified. The architecture comes from the directory's config (our
    config.json, open_clip_config.json, HF's config.json), else the tag's, else ``model`` (a
    registered name or config: needed for GELU checkpoints, whose shapes equal the QuickGELU ones),
    else it is inferred from the shapes.
    ``image_size`` interpolates the positional embedding to another input resolution.
    ``tokenizer`` is the one saved with the model, else OpenAI's (None when its vocabulary file is
    not available offline; see ``clipforge.tokenizer.download_openai_vocab``).
    """
    if pretrained is not None:
        path, model = _pretrained(str(name_or_path), pretrained, model, download_root)
    else:
        path = resolve_checkpoint(name_or_path, download_root)
    clip = load_model(path, device=device, model=model, image_size=image_size)
    tokenizer = tokenizer_for(path, clip.config)
    if tokenizer is None and not Path(name_or_path).exists():  # loaded by name: the user is online
        tokenizer = _download_openai_tokenizer(clip.config)
    return clip, preprocess_for(clip.config), tokenizer


def load_model(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    model: str | ModelConfig | None = None,
    image_size: int | None = None,
) -> CLIP:
    """Only the model of ``load`` (a local checkpoint file or directory), in eval mode."""
    path = Path(path)
    state = read_state_dict(path)
    config = (read_directory_config(path) if path.is_dir() else None) or (
        resolve_config(model) if model is not None else infer_config(state, source=str(path))
    )
    if image_size is not None and image_size != config.vision.image_size:
        try:
            config = resize_positional_embedding(state, config, image_size)
        except KeyError as err:
            raise CheckpointError(f"{path}: no positional embedding {err} to resize") from err
    clip = CLIP(config)
    load_weights(clip, state, source=str(path))
    return clip.to(device).eval()


def save(model: CLIP, directory: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write ``model`` in clipforge's format: ``directory``/model.safetensors, config.json (the
    resolved architecture) and the tokenizer's files; ``load(directory)`` gives it back."""
    return save_directory(model, directory, tokenizer)


def resolve_checkpoint(name_or_path: str | os.PathLike, download_root: str | os.PathLike | None = None) -> Path:
    """A local checkpoint path: ``name_or_path`` itself, OpenAI's weights for a model name, or a Hub
    repository's snapshot directory for ``hf-hub:ORG/NAME`` (downloaded)."""
    from clipforge import hub

    path, text = Path(name_or_path), str(name_or_path)
    if path.exists():
        return path
    if text.startswith(hub.HUB_PREFIX):
        return hub.download_hub(text[len(hub.HUB_PREFIX):], download_root).parent
    if _is_model_name(text) and canonical_name(text) in hub.OPENAI_URLS:
        return hub.download_openai(text, download_root)
    if _is_model_name(text):
        from clipforge.zoo.pretrained import tags_of

        tags = tags_of(text)
        raise CheckpointError(f"{text}: OpenAI released no weights of this architecture; " + (
            f"name released ones with pretrained=, one of: {', '.join(tags)}" if tags else
            "it has no pretrained tags (clipforge.create_model builds it with random weights)"))
    raise CheckpointError(
        f"{name_or_path}: no such file or directory, and not a model name with released weights (OpenAI's: "
        f"{', '.join(available_models()[:9])}; others by tag: clipforge models --pretrained) or {hub.HUB_PREFIX}ORG/NAME"
    )


def _pretrained(name: str, tag: str, model: str | ModelConfig | None,
                root: str | os.PathLike | None) -> tuple[Path, str | ModelConfig]:
    """The weight file of (architecture, tag) and the config to build: the architecture its weights
    were trained as, with the preprocessing they expect (``model`` overrides it)."""
    from clipforge.hub import download_pretrained
    from clipforge.zoo.pretrained import get_pretrained

    try:
        entry = get_pretrained(name, tag)
    except KeyError as err:
        raise CheckpointError(err.args[0]) from None
    config = resolve_config(entry.architecture).replace(preprocess=entry.preprocess)
    return download_pretrained(entry, root), model if model is not None else config


def _download_openai_tokenizer(config: ModelConfig):
    """OpenAI's tokenizer, fetching its vocabulary file once (as the weights just were); None offline."""
    from clipforge import tokenizer as tokenizer_module

    try:
        merges = tokenizer_module.download_openai_vocab()
    except OSError as err:
        warnings.warn(f"OpenAI's vocabulary file could not be downloaded ({err}); load() returns no tokenizer")
        return None
    return tokenizer_module.Tokenizer.openai(merges, context_length=config.text.context_length)


def _is_model_name(name: str) -> bool:
    try:
        canonical_name(name)
    except KeyError:
        return False
    return True


def tokenizer_for(path: Path, config: ModelConfig):
    """The tokenizer saved with the model (clipforge's BPE, or SigLIP's SentencePiece in transformers'
    layout), else OpenAI's (when the vocabulary sizes agree)."""
    from clipforge.tokenizer import Tokenizer, is_saved_tokenizer, load_tokenizer

    if path.is_dir() and is_saved_tokenizer(path):
        tokenizer = load_tokenizer(path, context_length=config.text.context_length)
        if tokenizer.vocab_size > config.text.vocab_size:
            raise CheckpointError(
                f"{path}: the saved tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary only "
                f"{config.text.vocab_size}"
            )
        return tokenizer
    if config.text.vocab_size != OPENAI_VOCAB_SIZE:
        raise CheckpointError(
            f"{path}: the model has a vocabulary of {config.text.vocab_size} tokens but no tokenizer files "
            f"(clipforge's tokenizer.json, SigLIP's spiece.model or SigLIP 2's tokenizer.json) are saved with it, "
            f"and OpenAI's vocabulary has {OPENAI_VOCAB_SIZE}"
        )
    try:
        return Tokenizer.openai(context_length=config.text.context_length)
    except FileNotFoundError:
        return None  # the model still loads; tokenize() explains how to get the vocabulary


__all__ = ["load", "load_model", "save", "resolve_checkpoint", "tokenizer_for", "available_models"]
