"""SigLIP's tokenizers: SentencePiece vocabularies, through the ``sentencepiece`` and ``tokenizers`` libraries.

Both give LongTensor [N, context] (SigLIP's context is 64) laid out as big_vision trained the models:
the ids of the text, then the end-of-sequence id, then padding, on the right. A text too long keeps
its first ``context - 1`` ids and ends with EOS ("sticky" EOS); ``truncate=False`` raises instead.
The text tower reads the last position, so the padding is part of the input (``trims_exactly`` is False).

* :class:`SigLIPTokenizer` (SigLIP): a SentencePiece model file (``spiece.model``, English C4's 32,000
  pieces for the released models), with the rules of transformers' ``SiglipTokenizer``: the text is
  split at the literal special tokens (``</s>``, ``<unk>``), each part is lowercased, stripped of ASCII
  punctuation and of repeated whitespace (big_vision's prompt canonicalisation), and encoded by
  SentencePiece; EOS ``</s>`` is appended unless the ids already end with it; padding is ``</s>`` too.
* :class:`GemmaTokenizer` (SigLIP 2): Gemma's 256,000-piece BPE vocabulary as a ``tokenizer.json``,
  run by the ``tokenizers`` library with a lowercasing normalizer in front (transformers'
  ``Siglip2Tokenizer``); no BOS, EOS ``<eos>`` (id 1) appended, padding ``<pad>`` (id 0).

Both save and load transformers' file layout (``spiece.model`` or ``tokenizer.json``, with
``tokenizer_config.json``), so a saved model directory opens in transformers too.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipforge.tokenizer.core import TextTooLongError

if TYPE_CHECKING:
    import torch

SPIECE_FILE = "spiece.model"
HF_TOKENIZER_FILE = "tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"
SPIECE_UNDERLINE = "▁"  # SentencePiece's word-boundary symbol
_PUNCTUATION = str.maketrans("", "", string.punctuation)


class _PieceTokenizer:
    """The batch layout both share: ids, sticky EOS, right padding to the context."""

    eos_token_id: int
    pad_token_id: int
    vocab_size: int

    def __init__(self, context_length: int):
        self.context_length = int(context_length)

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None,
                 truncate: bool = True) -> torch.Tensor:
        """Tokenize into a LongTensor [N, context_length] (default: self.context_length)."""
        import torch

        return torch.from_numpy(self.tokenize_numpy(texts, context_length, truncate))

    def tokenize_numpy(self, texts: str | Sequence[str], context_length: int | None = None,
                       truncate: bool = True) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        ctx = self.context_length if context_length is None else int(context_length)
        if ctx < 1:
            raise ValueError(f"context_length must be at least 1 (EOS), got {ctx}")
        out = np.full((len(texts), ctx), self.pad_token_id, dtype=np.int64)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text at index {i} is a {type(text).__name__}, expected str")
            ids = self.encode(text)
            if not ids or ids[-1] != self.eos_token_id:
                ids = ids + [self.eos_token_id]
            if len(ids) > ctx:
                if not truncate:
                    raise TextTooLongError(f"text at index {i} (length {len(text)} characters) is too long for "
                                           f"context_length={ctx}: {len(ids)} tokens with EOS; pass truncate=True")
                ids = ids[: ctx - 1] + [self.eos_token_id]
            out[i, : len(ids)] = ids
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, context_length={self.context_length})"


class SigLIPTokenizer(_PieceTokenizer):
    """SigLIP's SentencePiece tokenizer (transformers' ``SiglipTokenizer`` rules, see the module docstring).

    Whether the whitespace around a special token is stripped (``AddedToken.lstrip/rstrip``, which the
    released ``tokenizer_config.json`` sets) changes nothing here: every part is stripped when it is
    canonicalised.
    """

    def __init__(self, model: bytes, context_length: int = 64, *, lowercase: bool = True, eos: str = "</s>",
                 pad: str = "</s>", unk: str = "<unk>"):
        sentencepiece = _library("sentencepiece")
        super().__init__(context_length)
        self.model, self.lowercase, self.tokens = model, lowercase, {"eos": eos, "pad": pad, "unk": unk}
        self.sp = sentencepiece.SentencePieceProcessor(model_proto=model)
        self.vocab_size = self.sp.get_piece_size()
        self.eos_token_id, self.pad_token_id = self.sp.piece_to_id(eos), self.sp.piece_to_id(pad)
        self.specials = sorted({eos, pad, unk}, key=len, reverse=True)  # the longest first, as transformers matches
        self._split = re.compile("(" + "|".join(map(re.escape, self.specials)) + ")")
        self._unk_length = len(self.sp.encode(unk, out_type=str))

    @classmethod
    def from_file(cls, path: str | Path, context_length: int = 64, **kwargs: Any) -> SigLIPTokenizer:
        return cls(Path(path).read_bytes(), context_length, **kwargs)

    def encode(self, text: str) -> list[int]:
        """The ids of ``text`` without EOS, exactly as ``SiglipTokenizer(...)(text, add_special_tokens=False)``."""
        pieces: list[str] = []
        # The text split at the literal special tokens (odd indices), each other part encoded on its own.
        parts = self._split.split(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "))
        for i, part in enumerate(parts):
            if part:
                pieces += [part] if i % 2 else self._encode_part(part)
        if len(pieces) > 1 and pieces[0] == SPIECE_UNDERLINE and pieces[1] in self.specials:
            pieces = pieces[1:]  # a text that starts with a special token
        return [self.sp.piece_to_id(p) for p in pieces]

    def _encode_part(self, text: str) -> list[str]:
        text = self.canonicalize(text)
        # SentencePiece would add its own word boundary in front; encoding after the unknown token's
        # text and dropping that token's pieces keeps the text's leading "▁" as it is.
        pieces = self.sp.encode(self.tokens["unk"] + text, out_type=str)
        return pieces[self._unk_length:] if len(pieces) >= self._unk_length else pieces

    def canonicalize(self, text: str) -> str:
        """big_vision's prompt canonicalisation: lowercase, no ASCII punctuation, single spaces, stripped."""
        if self.lowercase:
            text = text.lower()
        return re.sub(r"\s+", " ", text.translate(_PUNCTUATION)).strip()

    def save(self, directory: str | Path) -> Path:
        """``spiece.model`` and transformers' ``tokenizer_config.json`` (``SiglipTokenizer``) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _write_bytes(directory / SPIECE_FILE, self.model)
        config = {"tokenizer_class": "SiglipTokenizer", "model_max_length": self.context_length,
                  "do_lower_case": self.lowercase, "eos_token": self.tokens["eos"], "pad_token": self.tokens["pad"],
                  "unk_token": self.tokens["unk"]}
        _write_bytes(directory / HF_CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
        return directory

    def __getstate__(self) -> dict:  # the SentencePiece processor is rebuilt (DataLoader workers)
        return {"model": self.model, "context_length": self.context_length, "lowercase": self.lowercase,
                "tokens": self.tokens}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model"], state["context_length"], lowercase=state["lowercase"], **state["tokens"])


class GemmaTokenizer(_PieceTokenizer):
    """SigLIP 2's tokenizer: a ``tokenizer.json`` (Gemma's BPE) with lowercasing in front (see the module docstring)."""

    def __init__(self, tokenizer_json: str, context_length: int = 64, *, eos: str = "<eos>", pad: str = "<pad>"):
        tokenizers = _library("tokenizers")
        Tokenizer, normalizers = tokenizers.Tokenizer, tokenizers.normalizers
        super().__init__(context_length)
        self.tokenizer_json, self.tokens = tokenizer_json, {"eos": eos, "pad": pad}
        self.backend = Tokenizer.from_str(tokenizer_json)
        # transformers' Siglip2Tokenizer: SigLIP 2 was trained on lowercased text.
        inner = self.backend.normalizer
        self.backend.normalizer = normalizers.Sequence([normalizers.Lowercase()] + ([inner] if inner else []))
        self.backend.no_truncation()
        self.backend.no_padding()
        self.vocab_size = self.backend.get_vocab_size(with_added_tokens=True)
        ids = [self.backend.token_to_id(t) for t in (eos, pad)]
        if None in ids:
            raise ValueError(f"the vocabulary has no {eos!r} or {pad!r} token")
        self.eos_token_id, self.pad_token_id = ids

    @classmethod
    def from_file(cls, path: str | Path, context_length: int = 64, **kwargs: Any) -> GemmaTokenizer:
        return cls(Path(path).read_text(encoding="utf-8"), context_length, **kwargs)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def save(self, directory: str | Path) -> Path:
        """``tokenizer.json`` and ``tokenizer_config.json`` (``Siglip2Tokenizer``) into ``directory``; the
        tokenizer.json's post-processor appends EOS, so transformers gives the same ids from it."""
        from tokenizers import Tokenizer
        from tokenizers.processors import TemplateProcessing

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        saved = Tokenizer.from_str(self.tokenizer_json)
        eos = self.tokens["eos"]
        saved.post_processor = TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B:1 {eos}:1",
                                                  special_tokens=[(eos, self.eos_token_id)])
        _write_bytes(directory / HF_TOKENIZER_FILE, saved.to_str().encode())
        config = {"tokenizer_class": "Siglip2Tokenizer", "model_max_length": self.context_length,
                  "add_bos_token": False, "add_eos_token": True, "padding_side": "right",
                  "eos_token": self.tokens["eos"], "pad_token": self.tokens["pad"]}
        _write_bytes(directory / HF_CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
        return directory

    def __getstate__(self) -> dict:
        return {"tokenizer_json": self.tokenizer_json, "context_length": self.context_length, "tokens": self.tokens}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["tokenizer_json"], state["context_length"], **state["tokens"])


def _library(name: str):
    """``sentencepiece`` or ``tokenizers``, with the install command when it is missing."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(f"SigLIP's tokenizers need the {name!r} library: pip install 'clipforge[siglip]'") from err


def _write_bytes(path: Path, data: bytes) -> None:
    """Write atomically (a temporary file beside it, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def is_piece_directory(directory: Path) -> bool:
    """Whether ``directory`` holds a SigLIP or SigLIP 2 tokenizer in transformers' layout."""
    return (directory / SPIECE_FILE).is_file() or _hf_tokenizer_json(directory) is not None


def _hf_tokenizer_json(directory: Path) -> str | None:
    path = directory / HF_TOKENIZER_FILE
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    return text if "model" in json.loads(text) else None  # transformers' format (ours has "type": "clip_bpe")


def load_piece_tokenizer(directory: str | Path, context_length: int | None = None) -> SigLIPTokenizer | GemmaTokenizer:
    """The SigLIP (``spiece.model``) or SigLIP 2 (``tokenizer.json``) tokenizer saved in ``directory``."""
    directory = Path(directory)
    config_path = directory / HF_CONFIG_FILE
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    context = context_length or _context_from(config)
    if (directory / SPIECE_FILE).is_file():
        return SigLIPTokenizer.from_file(directory / SPIECE_FILE, context, lowercase=config.get("do_lower_case", True),
                                         eos=_token(config, "eos_token", "</s>"), pad=_token(config, "pad_token", "</s>"),
                                         unk=_token(config, "unk_token", "<unk>"))
    tokenizer_json = _hf_tokenizer_json(directory)
    if tokenizer_json is None:
        raise FileNotFoundError(f"{directory}: no {SPIECE_FILE} or transformers {HF_TOKENIZER_FILE}")
    return GemmaTokenizer(tokenizer_json, context, eos=_token(config, "eos_token", "<eos>"),
                          pad=_token(config, "pad_token", "<pad>"))


def _token(config: dict, key: str, default: str) -> str:
    value = config.get(key, default)
    return value.get("content", default) if isinstance(value, dict) else value


def _context_from(config: dict) -> int:
    length = config.get("model_max_length", 64)
    return length if isinstance(length, int) and 0 < length <= 4096 else 64


def train_sentencepiece(captions: Sequence[str], vocab_size: int, context_length: int = 64) -> SigLIPTokenizer:
    """A SigLIP-style vocabulary learned from captions (SentencePiece unigram, T5's id layout: padding 0,
    EOS 1, unknown 2, no BOS), as a :class:`SigLIPTokenizer`. Deterministic for the same captions.
    ``vocab_size`` is an upper bound: a small corpus (few distinct words) gives fewer pieces. The
    captions are canonicalised first, as the tokenizer will see them."""
    import io

    sentencepiece = _library("sentencepiece")
    model = io.BytesIO()
    canonical = [re.sub(r"\s+", " ", c.lower().translate(_PUNCTUATION)).strip() for c in captions]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([c for c in canonical if c]), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
        eos_piece="</s>", unk_piece="<unk>", character_coverage=1.0, num_threads=1, minloglevel=2,
    )
    return SigLIPTokenizer(model.getvalue(), context_length)
