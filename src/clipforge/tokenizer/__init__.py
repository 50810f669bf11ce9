"""CLIP's tokenizer: OpenAI's exact ids, fast; plus vocabulary training and vocabulary files.

    from clipforge.tokenizer import Tokenizer, tokenize
    tokens = tokenize(["a photo of a cat"])           # LongTensor [1, 77], OpenAI's vocabulary
    tok = Tokenizer.from_directory("runs/x/tokenizer")  # a saved or trained vocabulary

OpenAI's merges file is found via a path, $CLIPFORGE_OPENAI_VOCAB or the user cache
(`download_openai_vocab()` puts it there once). SigLIP's SentencePiece tokenizers are in `pieces.py`;
`load_tokenizer(directory)` opens whichever kind a directory holds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from clipforge.tokenizer.core import CONFIG_FILE, SPECIAL_TOKENS, TextTooLongError, Tokenizer
from clipforge.tokenizer.openai_vocab import download_openai_vocab, resolve_openai_vocab
from clipforge.tokenizer.train import train_bpe

if TYPE_CHECKING:
    import torch

__all__ = [
    "SPECIAL_TOKENS",
    "is_saved_tokenizer",
    "load_tokenizer",
    "TextTooLongError",
    "Tokenizer",
    "download_openai_vocab",
    "openai_tokenizer",
    "resolve_openai_vocab",
    "tokenize",
    "train_bpe",
]


@lru_cache(maxsize=4)
def _openai_from(path: str) -> Tokenizer:
    return Tokenizer.from_merges(path)


def openai_tokenizer(path: str | None = None) -> Tokenizer:
    """OpenAI's tokenizer, loaded once per merges file (shared by `tokenize`)."""
    return _openai_from(str(resolve_openai_vocab(path)))


def tokenize(texts: str | Sequence[str], context_length: int = 77, truncate: bool = True) -> torch.Tensor:
    """OpenAI's `clip.tokenize`: LongTensor [N, context_length] of SOT, ids, EOT, zero padding.

    A text longer than the context keeps its first context_length - 2 ids and ends with EOT
    (`truncate=False` raises TextTooLongError, a ValueError, naming the text's index and length).
    """
    return openai_tokenizer()(texts, context_length=context_length, truncate=truncate)


def _is_clip_bpe(directory: Path) -> bool:
    path = directory / CONFIG_FILE
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("type") == "clip_bpe"
    except (json.JSONDecodeError, AttributeError):
        return False


def is_saved_tokenizer(directory: str | Path) -> bool:
    """Whether ``directory`` holds a tokenizer ``load_tokenizer`` opens."""
    from clipforge.tokenizer.pieces import is_piece_directory

    directory = Path(directory)
    return directory.is_dir() and (_is_clip_bpe(directory) or is_piece_directory(directory))


def load_tokenizer(directory: str | Path, context_length: int | None = None):
    """The tokenizer saved in ``directory``: clipforge's BPE (``tokenizer.json`` of type "clip_bpe", as
    saved), SigLIP's SentencePiece (``spiece.model``) or SigLIP 2's (transformers' ``tokenizer.json``);
    ``context_length`` sets the SentencePiece ones' (default: their ``tokenizer_config.json``'s)."""
    from clipforge.tokenizer.pieces import is_piece_directory, load_piece_tokenizer

    directory = Path(directory)
    if _is_clip_bpe(directory):
        return Tokenizer.from_directory(directory)
    if is_piece_directory(directory):
        return load_piece_tokenizer(directory, context_length)
    raise FileNotFoundError(f"{directory}: no saved tokenizer (clipforge's {CONFIG_FILE}, spiece.model, "
                            "or transformers' tokenizer.json)")
