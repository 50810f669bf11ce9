"""Building what a run needs from its config: tokenizer, model, data loader."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from clipforge.config import ModelConfig
from clipforge.factory import resolve_config
from clipforge.model import CLIP
from clipforge.tokenizer import Tokenizer
from clipforge.train.config import ModelSection, RunConfig, TokenizerSection, TrainConfig


def model_config(section: ModelSection, vocab_size: int | None = None) -> ModelConfig:
    """The registered config with the section's changes; ``vocab_size`` from the tokenizer."""
    changes: dict[str, Any] = {"vision": dict(section.vision), "text": dict(section.text)}
    if section.embed_dim is not None:
        changes["embed_dim"] = section.embed_dim
    if vocab_size is not None:
        changes["text"]["vocab_size"] = vocab_size
    return resolve_config(section.name, **changes)


def is_saved_tokenizer(directory: Path) -> bool:
    from clipforge.tokenizer import is_saved_tokenizer as saved

    return saved(directory)


def read_captions(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer.captions {path}: no such file (one caption a line)")
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_tokenizer(section: TokenizerSection, context_length: int, saved: Path | None = None,
                    echo: Callable[[str], Any] = print):
    """OpenAI's tokenizer, a saved one, or a vocabulary learned from captions (BPE or SentencePiece).

    ``saved``: a directory where an earlier start of this run stored its learned tokenizer; it is
    reused (learning is deterministic, reading is faster).
    """
    from clipforge.tokenizer import load_tokenizer

    if section.kind not in ("bpe", "sentencepiece"):
        raise ValueError(f"tokenizer.kind {section.kind!r}: expected 'bpe' or 'sentencepiece'")
    if section.source == "openai":
        return Tokenizer.openai(context_length=context_length)
    if section.source == "learn":
        if saved is not None and is_saved_tokenizer(saved):
            tokenizer = load_tokenizer(saved, context_length)
        else:
            tokenizer = _learn(section, context_length, echo)
    else:
        path = Path(section.source)
        if not (is_saved_tokenizer(path)):
            raise ValueError(f"tokenizer.source {section.source!r}: expected 'openai', 'learn' or a saved tokenizer directory")
        tokenizer = load_tokenizer(path, context_length)
    if isinstance(tokenizer, Tokenizer) and tokenizer.context_length != context_length:
        tokenizer = Tokenizer(tokenizer.vocab.merges, context_length=context_length)
    return tokenizer


def _learn(section: TokenizerSection, context_length: int, echo: Callable[[str], Any]):
    if not section.captions:
        raise ValueError("tokenizer.source = 'learn' needs tokenizer.captions: a file of captions")
    captions = read_captions(section.captions)
    echo(f"learning a {section.kind} vocabulary of {section.vocab_size} tokens from {len(captions)} captions")
    if section.kind == "sentencepiece":
        from clipforge.tokenizer.pieces import train_sentencepiece

        return train_sentencepiece(captions, section.vocab_size, context_length=context_length)
    from clipforge.tokenizer import train_bpe

    return train_bpe(captions, section.vocab_size, context_length=context_length)


def run_tokenizer(section: TokenizerSection, context_length: int, saved: Path,
                  echo: Callable[[str], Any] = print) -> Tokenizer:
    """The tokenizer a run's earlier start saved in ``saved``, else a new one, saved there atomically.

    Written once: a resume reads the run's own copy and never rewrites it (a copy that cannot be
    read, cut by a kill under an older version, is built and written again, with a message).
    """
    if is_saved_tokenizer(saved):
        try:
            return build_tokenizer(TokenizerSection(source=str(saved)), context_length)
        except (OSError, ValueError) as err:
            echo(f"the run's saved tokenizer {saved} cannot be read ({err}): building it again")
    tokenizer = build_tokenizer(section, context_length, None, echo)
    tokenizer.save(saved)
    return tokenizer


def build_clip(config: TrainConfig, tokenizer: Tokenizer) -> CLIP:
    """A new model (seeded by run.seed, identical on every rank) or the pretrained checkpoint."""
    section = config.model
    if section.pretrained:
        from clipforge.api import load

        clip, _, _ = load(section.pretrained, model=None, image_size=section.vision.get("image_size"))
        _check_family(clip, section)
        clip = _with_changes(clip, section)
        if clip.config.text.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"model.pretrained {section.pretrained}: vocabulary of {clip.config.text.vocab_size} "
                             f"tokens, but the tokenizer has {tokenizer.vocab_size}")
        return clip
    torch.manual_seed(config.run.seed)
    return CLIP(model_config(section, tokenizer.vocab_size))


def _check_family(clip: CLIP, section: ModelSection) -> None:
    """A resolution change was checked, when the recipe was read, for model.name's image tower: the
    checkpoint must hold a tower of that family."""
    if "image_size" not in section.vision:
        return
    named = model_config(section).vision.kind
    if clip.config.vision.kind != named:
        raise ValueError(f"model.pretrained {section.pretrained} holds a {clip.config.vision.kind!r} image tower, but "
                         f"model.name {section.name!r} names a {named!r} one: the continuation at model.vision.image_size "
                         f"= {section.vision['image_size']} was checked for model.name; name the checkpoint's architecture")


def _with_changes(clip: CLIP, section: ModelSection) -> CLIP:
    """A pretrained model with the section's runtime changes (patch dropout, activation ...)."""
    changes = {k: v for k, v in (("vision", section.vision), ("text", section.text)) if v}
    if not changes:
        return clip
    changed = CLIP(clip.config.replace(**changes))
    try:
        changed.load_state_dict(clip.state_dict(), strict=True)
    except RuntimeError as err:
        raise ValueError(f"model.pretrained {section.pretrained}: the changes {changes} do not fit its weights ({err})") from err
    return changed


def build_loader(config: TrainConfig, image_size: int, tokenizer: Tokenizer, rank: int, world_size: int):
    from clipforge.data.loader import build_loader as data_loader
    from clipforge.transforms import train_transform

    preprocess = model_config(config.model).preprocess
    transform = train_transform(image_size, scale=config.run.crop_scale, mean=preprocess.mean, std=preprocess.std)
    data = config.data
    if data.report is None:  # every run reports its bad data, beside its metrics
        data = replace(data, report=str(Path(config.run.out) / "data_report.json"))
    return data_loader(data, transform, tokenizer, rank=rank, world_size=world_size)


def accumulation(run: RunConfig, batch_size: int, world_size: int) -> int:
    """Micro-batches per optimizer step: ``run.accum_steps``, or what makes ``run.global_batch``."""
    if run.global_batch is None:
        return run.accum_steps
    per_step = batch_size * world_size
    if run.global_batch % per_step:
        raise ValueError(f"run.global_batch = {run.global_batch} is not a multiple of data.batch_size × processes = "
                         f"{batch_size} × {world_size}: change data.batch_size or the number of processes")
    return run.global_batch // per_step


def total_steps(run: RunConfig, steps_per_epoch: int) -> int:
    return run.steps if run.steps is not None else run.epochs * steps_per_epoch
