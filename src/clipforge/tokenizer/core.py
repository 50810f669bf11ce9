"""The CLIP tokenizer: exact OpenAI ids, batched and cached for speed.

Speed comes from two facts. Tokens never cross whitespace (no alternative of the pre-tokenizer
matches a whitespace character), so a cleaned text is the concatenation of its whitespace-separated
chunks' tokens, and captions reuse few chunks: a chunk -> ids cache turns most of the work into dict
lookups. And a batch of plain-ASCII texts (see cleaning.py) is lowercased and split in one C call
each, joined with a separator chunk, then laid out into the [N, context] array with numpy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipforge.paths import atomic_write
from clipforge.tokenizer.bpe import BPEVocab, read_merges, unicode_to_bytes, write_merges
from clipforge.tokenizer.cleaning import cap_raw_text, clean_text, compile_pattern, is_plain_ascii

if TYPE_CHECKING:
    import torch

SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")  # open_clip's names; OpenAI's are <|startoftext|>, <|endoftext|>
MERGES_FILE = "bpe_merges.txt.gz"
CONFIG_FILE = "tokenizer.json"
_SEPARATOR = "\x00"  # never in a plain-ASCII text, and a chunk of its own once surrounded by spaces
_PLAIN_MAX_CHARS = 4096  # longer texts take the per-text path, which stops once the context is full
# Bounded-time encoding of huge non-plain texts: ftfy (up to ~1 s per MB) sees the first 65,536
# raw characters, widened x4 up to 262,144 only while that holds too few tokens.
_RAW_CAP, _RAW_CAP_MAX = 1 << 16, 1 << 18
_SLAB = 1 << 14  # plain texts processed together
_CACHE_MAX_ENTRIES = 1 << 19
_CACHE_MAX_KEY_CHARS = 64


class TextTooLongError(ValueError, RuntimeError):
    """A text does not fit the context with truncate=False (a RuntimeError too, as OpenAI's)."""


class _Memo(dict):
    """A dict that computes and stores missing values; `memo.__getitem__` is a C-level callable,
    so `map(memo.__getitem__, keys)` costs a dict lookup per key on hits."""

    def __init__(self, compute: Callable[[str], tuple[int, ...]], seed: dict[str, tuple[int, ...]]):
        super().__init__(seed)
        self.compute = compute
        self.seed = dict(seed)

    def __missing__(self, key: str) -> tuple[int, ...]:
        value = self.compute(key)
        if len(key) <= _CACHE_MAX_KEY_CHARS:
            if len(self) >= _CACHE_MAX_ENTRIES:  # bound memory on endless streams of new words
                self.clear()
                self.update(self.seed)
            self[key] = value
        return value


class Tokenizer:
    """Byte-level BPE tokenizer with OpenAI's cleaning, pre-tokenization and vocabulary layout.

    Ids: 512 byte symbols, one per merge, then start-of-text and end-of-text (the last two ids).
    Padding is 0. `tok(texts)` gives a LongTensor [N, context_length]: SOT, ids, EOT, zeros; a text
    too long keeps its first context_length - 2 ids and EOT in the last slot.
    """

    def __init__(
        self,
        merges: Sequence[tuple[str, str]],
        context_length: int = 77,
        special_tokens: Sequence[str] = SPECIAL_TOKENS,
    ):
        if len(special_tokens) != 2:
            raise ValueError("special_tokens must be (start-of-text, end-of-text)")
        self.vocab = BPEVocab(merges, special_tokens)
        self.context_length = int(context_length)
        self.special_tokens = tuple(special_tokens)
        self.vocab_size = len(self.vocab)
        self.sot_token_id = self.vocab_size - 2
        self.eot_token_id = self.vocab_size - 1
        self.pad_token_id = 0
        self._pattern = compile_pattern(self.special_tokens)
        # A special token's text encodes to its id (OpenAI seeds its BPE cache the same way).
        seed = {t: (self.vocab.token_to_id[t],) for t in self.special_tokens}
        self._words = _Memo(self.vocab.word_ids, seed)
        self._chunks = _Memo(self._chunk_ids, {_SEPARATOR: (-1,)})

    # ---- construction and files -------------------------------------------------------------
    @classmethod
    def from_merges(cls, path: str | Path, context_length: int = 77, num_merges: int | None = None) -> Tokenizer:
        """Load any merges file (`#version` header, one `a b` merge a line; gzip or plain)."""
        return cls(read_merges(path, num_merges), context_length=context_length)

    @classmethod
    def openai(cls, path: str | Path | None = None, context_length: int = 77) -> Tokenizer:
        """OpenAI's tokenizer. The merges file is `path`, else $CLIPFORGE_OPENAI_VOCAB, else the user
        cache (see `clipforge.tokenizer.download_openai_vocab`)."""
        from clipforge.tokenizer.openai_vocab import resolve_openai_vocab

        return cls.from_merges(resolve_openai_vocab(path), context_length=context_length)

    def save(self, directory: str | Path) -> Path:
        """Write `bpe_merges.txt.gz` and `tokenizer.json` (settings) into `directory`, each file atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_merges(directory / MERGES_FILE, self.vocab.merges)
        config = {
            "type": "clip_bpe",
            "merges_file": MERGES_FILE,
            "num_merges": len(self.vocab.merges),
            "vocab_size": self.vocab_size,
            "context_length": self.context_length,
            "special_tokens": list(self.special_tokens),
            "pad_token_id": self.pad_token_id,
            "cleaning": "ftfy.fix_text, html.unescape x2, whitespace collapse, lowercase",
        }
        # Written after the merges, each file atomically: a directory with tokenizer.json is complete.
        atomic_write(directory / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_directory(cls, directory: str | Path) -> Tokenizer:
        """Load a tokenizer written by `save`."""
        directory = Path(directory)
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        if config.get("type") != "clip_bpe":  # e.g. a Hugging Face tokenizer.json
            raise ValueError(f"{directory / CONFIG_FILE} is not a clipforge tokenizer (type {config.get('type')!r})")
        merges = read_merges(directory / config.get("merges_file", MERGES_FILE), config.get("num_merges"))
        tok = cls(merges, config.get("context_length", 77), config.get("special_tokens", SPECIAL_TOKENS))
        if tok.vocab_size != config.get("vocab_size", tok.vocab_size):
            raise ValueError(f"{directory}: vocab_size {tok.vocab_size} != {config['vocab_size']} in {CONFIG_FILE}")
        return tok

    def __getstate__(self) -> dict:  # caches and compiled pattern are rebuilt (DataLoader workers)
        return {"merges": self.vocab.merges, "context_length": self.context_length, "special_tokens": self.special_tokens}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["merges"], state["context_length"], state["special_tokens"])

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"

    def clear_cache(self) -> None:
        """Forget the cached ids of words and chunks (they are bounded anyway; for memory or timing)."""
        for memo in (self._words, self._chunks):
            memo.clear()
            memo.update(memo.seed)

    # ---- encoding ------------------------------------------------------------------------------
    def _chunk_ids(self, chunk: str) -> tuple[int, ...]:
        return tuple(chain.from_iterable(map(self._words.__getitem__, self._pattern.findall(chunk))))

    def encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        """BPE ids of `text`, without SOT/EOT: exactly OpenAI's `SimpleTokenizer.encode`.

        With `max_tokens`, returns the first `max_tokens` ids in bounded time whatever the length of
        the text (the [N, context] call uses this with context_length - 1). Two caps make it bounded:
        - a single word longer than `max_tokens * 32` characters (32 bytes = the longest vocabulary
          entry, so the cut still yields at least `max_tokens` ids) is BPE-encoded from that prefix;
        - a text that is not plain ASCII (one that needs ftfy) is cleaned from its first 65,536
          characters, cut after a line break or a space (cleaning.cap_raw_text), widened to
          262,144 characters when that gives fewer than `max_tokens` ids.
        Ids can differ from the full text's only for a word over the cap whose BPE merges would
        cascade across the cut, a line over the cap whose mojibake repair depends on text past it,
        or 262,144+ characters of filler before the first `max_tokens` ids.
        Without `max_tokens`, nothing is capped: work grows with the text (quadratically with ftfy
        on very long lines, n log n with a giant single word).
        """
        if not isinstance(text, str):
            raise TypeError(f"expected a str, got {type(text).__name__}")
        if max_tokens is None:
            return list(chain.from_iterable(map(self._chunks.__getitem__, clean_text(text).split())))
        return self._encode_prefix(text, max_tokens)

    def _encode_prefix(self, text: str, max_tokens: int) -> list[int]:
        if is_plain_ascii(text):  # cleaning = lowercase + whitespace split (cleaning.py)
            # Every chunk gives at least one id, so the first max_tokens chunks are enough; the split
            # also spares the regex a scan through long runs of whitespace.
            return self._first_ids(" ".join(text.split(None, max_tokens)[:max_tokens]).lower(), max_tokens)
        # A hard cut (no space or line break in the kept second half) is harmless too: that half holds
        # >= 2 * word_cap bytes, so the first max_tokens ids come before the token that was cut, or
        # that token is over word_cap and only its first word_cap characters count anyway (unless ftfy
        # deletes most of that half: a long run of control characters right before the cut).
        cap = max(_RAW_CAP, 4 * max_tokens * self.vocab.max_token_bytes)
        while True:  # widen the cut only when it kept too little text (e.g. a long run of filler)
            raw = cap_raw_text(text, cap)
            ids = self._first_ids(clean_text(raw), max_tokens)
            if len(ids) >= max_tokens or len(raw) == len(text) or cap >= _RAW_CAP_MAX:
                return ids
            cap *= 4

    def _first_ids(self, cleaned: str, max_tokens: int) -> list[int]:
        word_cap = max_tokens * self.vocab.max_token_bytes
        ids: list[int] = []
        for match in self._pattern.finditer(cleaned):  # lazy: stops once there are enough ids
            if len(ids) >= max_tokens:
                break
            word = match.group()
            if len(word) > word_cap:  # each id covers <= max_token_bytes bytes: still >= max_tokens ids
                ids.extend(self.vocab.word_ids(word[:word_cap], end_of_word=False))
                break
            ids.extend(self._words[word])
        return ids[:max_tokens]

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None, truncate: bool = True
    ) -> torch.Tensor:
        """Tokenize into a LongTensor [N, context_length] (default: self.context_length)."""
        import torch  # lazily: the CLI and vocabulary training do not need torch's start-up

        return torch.from_numpy(self.tokenize_numpy(texts, context_length, truncate))

    def tokenize_numpy(
        self, texts: str | Sequence[str], context_length: int | None = None, truncate: bool = True
    ) -> np.ndarray:
        """As `__call__`, as an int64 numpy array [N, context_length]."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        ctx = self.context_length if context_length is None else int(context_length)
        if ctx < 2:
            raise ValueError(f"context_length must be at least 2 (SOT and EOT), got {ctx}")
        out = np.zeros((len(texts), ctx), dtype=np.int64)
        lengths = np.zeros(len(texts), dtype=np.int64)  # ids per text (the per-text path stops at ctx - 1)
        plain, other = self._split_plain(texts)
        for start in range(0, len(plain), _SLAB):  # slabs bound the memory of the chunk lists
            self._fill_plain(texts, plain[start : start + _SLAB], out, lengths)
        for i in other:  # ftfy path, or long texts: only ctx - 1 ids are needed to fill and to detect overflow
            ids = self._encode_prefix(texts[i], ctx - 1)
            out[i, 1 : 1 + min(len(ids), ctx - 2)] = ids[: ctx - 2]
            lengths[i] = len(ids)
        too_long = np.flatnonzero(lengths > ctx - 2)
        if too_long.size and not truncate:
            i = int(too_long[0])
            # plain texts have exact counts; the others stopped counting at ctx - 1 ids
            count = f"{lengths[i] + 2} tokens" if i in set(plain) else f"more than {ctx} tokens"
            raise TextTooLongError(
                f"text at index {i} (length {len(texts[i])} characters) is too long for context_length="
                f"{ctx}: {count} with start/end of text; pass truncate=True to cut it"
            )
        out[:, 0] = self.sot_token_id
        out[np.arange(len(texts)), np.minimum(lengths, ctx - 2) + 1] = self.eot_token_id
        return out

    def _split_plain(self, texts: list[str]) -> tuple[list[int], list[int]]:
        """Indices of plain-ASCII texts (fast path) and of the others; raises on a non-string."""
        try:
            joined = "\n".join(texts)
        except TypeError:
            i = next(i for i, t in enumerate(texts) if not isinstance(t, str))
            raise TypeError(f"text at index {i} is a {type(texts[i]).__name__}, expected str") from None
        if is_plain_ascii(joined) and max(map(len, texts), default=0) <= _PLAIN_MAX_CHARS:
            return list(range(len(texts))), []
        plain: list[int] = []
        other: list[int] = []
        for i, t in enumerate(texts):
            (plain if len(t) <= _PLAIN_MAX_CHARS and is_plain_ascii(t) else other).append(i)
        return plain, other

    def _fill_plain(self, texts: list[str], rows: list[int], out: np.ndarray, lengths: np.ndarray) -> None:
        """Write the ids of plain-ASCII texts into `out` rows: for them cleaning is lowercase plus
        whitespace split (cleaning.py), so one lower() and one split() serve the whole batch."""
        sep = f" {_SEPARATOR} "
        chunks = (sep.join([texts[i] for i in rows]) + sep).lower().split()
        flat = np.fromiter(chain.from_iterable(map(self._chunks.__getitem__, chunks)), dtype=np.int64)
        is_sep = flat < 0  # one separator after each text
        sep_at = np.flatnonzero(is_sep)
        starts = np.concatenate(([0], sep_at[:-1] + 1))
        owner = np.cumsum(is_sep) - is_sep  # which text each flat id belongs to
        pos = np.arange(flat.size) - starts[owner]  # position of the id inside its text
        ctx = out.shape[1]
        keep = ~is_sep & (pos < ctx - 2)
        row_of = np.asarray(rows, dtype=np.int64)
        out[row_of[owner[keep]], pos[keep] + 1] = flat[keep]
        lengths[row_of] = sep_at - starts

    # ---- decoding ------------------------------------------------------------------------------
    def decode(self, ids: Iterable[int]) -> str | list[str]:
        """Text of `ids`, skipping SOT, EOT and trailing padding; a 2-D input gives a list of texts.
        As OpenAI's decode, `</w>` becomes a space (the trailing one is dropped)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        ids = list(ids)
        if ids and isinstance(ids[0], (list, tuple)):
            return [self.decode(row) for row in ids]
        while ids and ids[-1] == self.pad_token_id:
            ids.pop()
        skip = {self.sot_token_id, self.eot_token_id}
        table = self.vocab.id_to_token
        text = "".join(table[i] for i in ids if i not in skip)
        byte_of = unicode_to_bytes()
        data = bytes(byte_of[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ").strip(" ")

