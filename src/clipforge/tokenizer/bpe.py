"""Byte-level BPE as in OpenAI's CLIP: the byte alphabet, the merges file, and the merge loop.

A word is UTF-8 encoded, each byte is mapped to a printable character (`bytes_to_unicode`), the last
character gets the end-of-word marker `</w>`, then merges are applied. The vocabulary is laid out as
OpenAI's: 256 byte symbols, the same 256 with `</w>`, one entry per merge, then the special tokens.
"""

from __future__ import annotations

import gzip
import heapq
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from clipforge.paths import atomic_write

END_OF_WORD = "</w>"
MERGES_HEADER = "#version: 0.2"
# OpenAI's file carries 262,144 merges but CLIP uses only the first 49152 - 256 - 2 of them
# (clip/simple_tokenizer.py reads lines 1..48894); its header line identifies it.
OPENAI_HEADER_TAG = "bpe_simple_vocab_16e6.txt#version"
OPENAI_NUM_MERGES = 49152 - 256 - 2


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable character, so that BPE symbols never contain whitespace or
    control characters (OpenAI's table: printable Latin-1 bytes map to themselves, the rest to
    code points from 256 upwards). The dict order is OpenAI's and gives the first 256 ids:
    the printable bytes first, then the others."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    """Inverse of `bytes_to_unicode`."""
    return {c: b for b, c in bytes_to_unicode().items()}


def byte_symbols(word: str) -> list[str]:
    """The BPE symbols of a word before any merge: one per UTF-8 byte."""
    table = bytes_to_unicode()
    return [table[b] for b in word.encode("utf-8")]


def read_merges(path: str | Path, num_merges: int | None = None) -> list[tuple[str, str]]:
    """Read a merges file (plain or gzip). The first line is skipped when it is a `#version` header.

    `num_merges=None` keeps every merge, except for OpenAI's own file (recognised by its header),
    where it keeps the 48,894 that CLIP uses, exactly as OpenAI's loader does.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    lines = raw.decode("utf-8").split("\n")
    start = 1 if lines and "#version" in lines[0] else 0
    if num_merges is None and start and OPENAI_HEADER_TAG in lines[0]:
        num_merges = OPENAI_NUM_MERGES
    merges: list[tuple[str, str]] = []
    for lineno, line in enumerate(lines[start:], start=start + 1):
        if num_merges is not None and len(merges) == num_merges:
            break
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: a merge line must hold two symbols, got {line!r}")
        merges.append((parts[0], parts[1]))
    if num_merges is not None and len(merges) < num_merges:
        raise ValueError(f"{path} holds {len(merges)} merges, fewer than the {num_merges} asked for")
    return merges


def write_merges(path: str | Path, merges: Sequence[tuple[str, str]]) -> None:
    """Write merges in the same format (header + one `a b` line each), gzip when the name ends in
    .gz, atomically. The gzip timestamp is zeroed so equal vocabularies give byte-identical files."""
    text = "\n".join([MERGES_HEADER, *(f"{a} {b}" for a, b in merges)]) + "\n"
    data = text.encode("utf-8")
    path = Path(path)
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    atomic_write(path, data)  # a kill mid-write must not leave an empty merges file behind


class BPEVocab:
    """The vocabulary and merge ranks built from a merge list, with OpenAI's exact semantics:
    when two merges build the same string, the string's id is the later one (a dict built in order)."""

    def __init__(self, merges: Sequence[tuple[str, str]], special_tokens: Sequence[str]):
        self.merges = [(str(a), str(b)) for a, b in merges]
        self.special_tokens = list(special_tokens)
        base = list(bytes_to_unicode().values())
        symbols = base + [s + END_OF_WORD for s in base] + [a + b for a, b in self.merges]
        # The longest symbol bounds how many bytes one id can stand for (32 for OpenAI's vocabulary).
        self.max_token_bytes = max(len(s.removesuffix(END_OF_WORD)) for s in symbols)
        self.id_to_token: list[str] = symbols + self.special_tokens
        self.token_to_id = {tok: i for i, tok in enumerate(self.id_to_token)}
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}

    def __len__(self) -> int:
        return len(self.id_to_token)

    def word_ids(self, word: str, end_of_word: bool = True) -> tuple[int, ...]:
        """BPE ids of one pre-tokenized word. `end_of_word=False` encodes a piece that the text
        continues after (used only when a giant word is capped)."""
        symbols = byte_symbols(word)
        if end_of_word and symbols:
            symbols[-1] += END_OF_WORD
        lookup = self.token_to_id
        return tuple(lookup[s] for s in merge_symbols(symbols, self.ranks))


def merge_symbols(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges exactly as OpenAI's loop does, in O(n log n) instead of O(n^2).

    OpenAI's loop: take the adjacent pair of lowest rank, merge all its occurrences left to right
    (non-overlapping), recompute the pairs, repeat. Here a heap holds (rank, left position) for every
    adjacent pair that has a rank; a phase pops every entry of the lowest rank (a rank names exactly
    one pair) in position order and merges those still valid. Pairs created during a phase are
    pushed only after it, because OpenAI finishes a phase before looking at new pairs, and a merge
    can never create another occurrence of the pair being merged (the merged symbol is longer).
    """
    n = len(symbols)
    if n < 2:
        return symbols
    sym = list(symbols)
    nxt = [*range(1, n), -1]
    prv = [*range(-1, n - 1)]
    alive = [True] * n
    heap = [(r, i) for i in range(n - 1) if (r := ranks.get((sym[i], sym[i + 1]))) is not None]
    heapq.heapify(heap)
    while heap:
        rank = heap[0][0]
        positions = []
        while heap and heap[0][0] == rank:
            positions.append(heapq.heappop(heap)[1])
        created = []
        for i in positions:  # ascending: heap order is (rank, position)
            j = nxt[i]
            if not alive[i] or j < 0 or ranks.get((sym[i], sym[j])) != rank:
                continue  # stale: this occurrence was consumed or changed
            sym[i] += sym[j]
            alive[j] = False
            nxt[i] = k = nxt[j]
            if k >= 0:
                prv[k] = i
            created.append(prv[i])
            created.append(i)
        for i in created:
            j = nxt[i] if i >= 0 else -1
            if j >= 0 and alive[i] and (r := ranks.get((sym[i], sym[j]))) is not None:
                heapq.heappush(heap, (r, i))
    return [s for s, keep in zip(sym, alive) if keep]
