"""A line-by-line port of OpenAI's pure-Python tokenizer (clip/simple_tokenizer.py, with open_clip's
special-token names and truncation), kept as the ground truth that tests and the benchmark compare
the fast path against. Nothing here is optimised, on purpose; do not use it for real work.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import regex

from clipforge.tokenizer.bpe import END_OF_WORD, bytes_to_unicode, read_merges
from clipforge.tokenizer.cleaning import WORD_PATTERN, reference_clean


def get_pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word[:-1], word[1:]))


def reference_bpe(token: str, bpe_ranks: dict[tuple[str, str], int]) -> tuple[str, ...]:
    """OpenAI's merge loop on one byte-encoded word (`SimpleTokenizer.bpe` without its cache)."""
    word = tuple(token[:-1]) + (token[-1] + END_OF_WORD,)
    pairs = get_pairs(word)
    if not pairs:
        return word
    while True:
        bigram = min(pairs, key=lambda pair: bpe_ranks.get(pair, float("inf")))
        if bigram not in bpe_ranks:
            break
        first, second = bigram
        new_word: list[str] = []
        i = 0
        while i < len(word):
            try:
                j = word.index(first, i)
            except ValueError:
                new_word.extend(word[i:])
                break
            new_word.extend(word[i:j])
            i = j
            if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                new_word.append(first + second)
                i += 2
            else:
                new_word.append(word[i])
                i += 1
        word = tuple(new_word)
        if len(word) == 1:
            break
        pairs = get_pairs(word)
    return word


class ReferenceTokenizer:
    def __init__(self, merges_path: str | Path, special_tokens: Sequence[str] = ("<start_of_text>", "<end_of_text>")):
        self.byte_encoder = bytes_to_unicode()
        merges = read_merges(merges_path)
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + END_OF_WORD for v in vocab]
        vocab += ["".join(m) for m in merges] + list(special_tokens)
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {t: t for t in special_tokens}
        specials = "|".join(special_tokens)
        self.pat = regex.compile(specials + "|" + WORD_PATTERN, regex.IGNORECASE)
        self.sot_token_id, self.eot_token_id = len(vocab) - 2, len(vocab) - 1

    def bpe(self, token: str) -> str:
        if token not in self.cache:
            self.cache[token] = " ".join(reference_bpe(token, self.bpe_ranks))
        return self.cache[token]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for token in self.pat.findall(reference_clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def tokens(self, text: str, context_length: int = 77) -> list[int]:
        """The non-padding part of the [context_length] row: SOT, ids, EOT (EOT last when cut)."""
        tokens = [self.sot_token_id, *self.encode(text), self.eot_token_id]
        if len(tokens) > context_length:
            tokens = tokens[:context_length]
            tokens[-1] = self.eot_token_id
        return tokens
