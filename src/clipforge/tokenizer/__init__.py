"""CLIP's tokenizer: OpenAI's exact ids, fast; plus vocabulary training and vocabulary files.

    from clipforge.tokenizer import Tokenizer, tokenize
    tokens = tokenize(["a photo of a cat"])           # LongTensor [1, 77], OpenAI's vocabulary
    tok = Tokenizer.from_directory("runs/x/tokenizer")  # a saved or trained vocabulary

OpenAI's merges file is found via a path, $CLIPFORGE_OPENAI_VOCAB or the user cache
(`download_openai_vocab()` puts it there once).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

from clipforge.tokenizer.core import SPECIAL_TOKENS, TextTooLongError, Tokenizer
from clipforge.tokenizer.openai_vocab import download_openai_vocab, resolve_openai_vocab
from clipforge.tokenizer.train import train_bpe

if TYPE_CHECKING:
    import torch

__all__ = [
    "SPECIAL_TOKENS",
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
