"""Learn a BPE vocabulary from captions, in OpenAI's format (`train_bpe`).

Same cleaning and pre-tokenization as encoding, words start as byte symbols with `</w>` on the last,
and the most frequent adjacent pair is merged until the vocabulary is full. Pair counts are updated
incrementally: a merge touches only the words that contain the pair (an index pair -> words), and a
heap with lazy deletion finds the next best pair, so training costs about the number of symbol
changes rather than (merges x corpus). Ties break on the pair's text, and distinct words are
processed in sorted order, so the result depends only on the multiset of words: no hash seed, no
input order.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable

from clipforge.tokenizer.bpe import END_OF_WORD, byte_symbols
from clipforge.tokenizer.cleaning import clean_text, compile_pattern, is_plain_ascii
from clipforge.tokenizer.core import SPECIAL_TOKENS, Tokenizer

BASE_VOCAB = 512 + 2  # byte symbols, byte symbols with </w>, then SOT and EOT


def train_bpe(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2, context_length: int = 77
) -> Tokenizer:
    """A `Tokenizer` whose vocabulary is learned from `texts`.

    `vocab_size` counts every id (512 byte symbols + merges + SOT + EOT, OpenAI's layout). Merging
    stops early when no pair occurs `min_frequency` times; `tokenizer.vocab_size` tells the size
    reached. Deterministic for a given multiset of words.
    """
    if vocab_size < BASE_VOCAB:
        raise ValueError(f"vocab_size must be at least {BASE_VOCAB} (bytes, bytes with </w>, SOT, EOT)")
    merges = learn_merges(count_words(texts), vocab_size - BASE_VOCAB, min_frequency)
    return Tokenizer(merges, context_length=context_length)


def count_words(texts: Iterable[str]) -> Counter[str]:
    """Pre-tokenized words of the cleaned texts, with counts (special-token strings excluded)."""
    chunks: Counter[str] = Counter()
    plain: list[str] = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text at index {i} is a {type(text).__name__}, expected str")
        if is_plain_ascii(text):
            plain.append(text)  # cleaning is lowercase + whitespace split: done in bulk below
        else:
            chunks.update(clean_text(text).split())
        if len(plain) >= 65536:
            chunks.update("\n".join(plain).lower().split())
            plain.clear()
    chunks.update("\n".join(plain).lower().split())
    pattern = compile_pattern(SPECIAL_TOKENS)
    words: Counter[str] = Counter()
    for chunk, n in chunks.items():  # tokens never cross whitespace, so chunks split independently
        for word in pattern.findall(chunk):
            if word not in SPECIAL_TOKENS:
                words[word] += n
    return words


def _merge_pair(symbols: tuple[str, ...], a: str, b: str) -> tuple[str, ...]:
    """Merge every (a, b) left to right, non-overlapping, as encoding does."""
    out: list[str] = []
    i, n = 0, len(symbols)
    while i < n:
        if i < n - 1 and symbols[i] == a and symbols[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def learn_merges(word_counts: dict[str, int], num_merges: int, min_frequency: int = 2) -> list[tuple[str, str]]:
    """Up to `num_merges` merges, most frequent pair first (ties: smallest pair text)."""
    words: list[tuple[str, ...]] = []
    freqs: list[int] = []
    for word, n in sorted(word_counts.items()):
        symbols = byte_symbols(word)
        symbols[-1] += END_OF_WORD
        words.append(tuple(symbols))
        freqs.append(n)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for idx, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            counts[pair] += freqs[idx]
            where[pair].add(idx)
    heap = [(-n, a, b) for (a, b), n in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap and len(merges) < num_merges:
        neg, a, b = heapq.heappop(heap)
        if counts.get((a, b), 0) != -neg:
            continue  # stale entry: the count changed since it was pushed
        if -neg < max(min_frequency, 1):
            break
        merges.append((a, b))
        touched: set[tuple[str, str]] = set()
        for idx in sorted(where.pop((a, b))):
            old = words[idx]
            new = _merge_pair(old, a, b)
            if new == old:
                continue  # the index is stale: an earlier merge already consumed the pair here
            f = freqs[idx]
            for pair in zip(old, old[1:]):
                counts[pair] -= f
                touched.add(pair)
            for pair in zip(new, new[1:]):
                counts[pair] += f
                where[pair].add(idx)
                touched.add(pair)
            words[idx] = new
        for pair in sorted(touched):
            n = counts.get(pair, 0)
            if n > 0:
                heapq.heappush(heap, (-n, *pair))
            else:
                counts.pop(pair, None)
                where.pop(pair, None)
    return merges
