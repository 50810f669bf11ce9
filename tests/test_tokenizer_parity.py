"""The fast path against OpenAI's algorithm, beyond the fixture: the plain-ASCII cleaning shortcut,
the O(n log n) merge loop, the batched chunk path and the bounded prefix path, on seeded corpora."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from clipforge.tokenizer import Tokenizer, core
from clipforge.tokenizer.bpe import byte_symbols, merge_symbols
from clipforge.tokenizer.cleaning import PLAIN_ASCII_BYTES, clean_text, is_plain_ascii, reference_clean
from clipforge.tokenizer.reference import ReferenceTokenizer, reference_bpe
from clipforge.tokenizer.samples import mixed_unicode_texts, synthetic_captions

PLAIN = [chr(b) for b in PLAIN_ASCII_BYTES]


@pytest.fixture(scope="module")
def vocab_path(reference_dir: Path) -> Path:
    return reference_dir / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"


@pytest.fixture(scope="module")
def tok(vocab_path: Path) -> Tokenizer:
    return Tokenizer.openai(vocab_path)


@pytest.fixture(scope="module")
def ref(vocab_path: Path) -> ReferenceTokenizer:
    return ReferenceTokenizer(vocab_path)


def test_plain_ascii_shortcut_on_every_short_ascii_string() -> None:
    """Exhaustive over all ASCII strings of length <= 2: the shortcut applies only where it is exact."""
    ascii_chars = [chr(i) for i in range(128)]
    strings = ascii_chars + ["".join(p) for p in itertools.product(ascii_chars, repeat=2)]
    tricky = "\t\n\r <;#&[aA"  # line breaks, tag and entity characters, escape-sequence parts
    strings += ["".join(p) for p in itertools.product(tricky, repeat=3)]
    plain = 0
    for s in strings:
        expected = reference_clean(s)
        if is_plain_ascii(s):
            plain += 1
            assert expected == " ".join(s.split()).lower(), repr(s)
        assert clean_text(s) == expected, repr(s)
    assert plain > 9000


def test_plain_ascii_shortcut_on_random_strings() -> None:
    r = random.Random(0)
    pieces = PLAIN + ["\r\n", "<b>", "</i>", "#39;", "[31m", "amp;", "lt;", "'S", "'ll", "<start_of_text>"]
    for _ in range(3000):
        s = "".join(r.choice(pieces) for _ in range(r.randint(0, 60)))
        assert is_plain_ascii(s)
        assert reference_clean(s) == " ".join(s.split()).lower() == clean_text(s), repr(s)


@pytest.mark.parametrize("text", ["&amp;", "AT&T &copy2020", "\x1b[31mred", "a\x1cb", "a\x0bb", "a\x00b", "a\x7fb"])
def test_each_excluded_character_can_change_the_cleaning(text: str) -> None:
    """Why '&', ESC and the removed control characters are outside the plain set."""
    assert not is_plain_ascii(text)
    assert reference_clean(text) != " ".join(text.split()).lower()


def test_fast_path_equals_reference_on_mixed_unicode(tok: Tokenizer, ref: ReferenceTokenizer) -> None:
    texts = mixed_unicode_texts(1500, seed=11)
    rows = tok(texts).tolist()
    for text, row in zip(texts, rows):
        ids = ref.encode(text)
        assert tok.encode(text) == ids, repr(text)
        expected = [ref.sot_token_id, *ids[:75], ref.eot_token_id]
        assert row == expected + [0] * (77 - len(expected)), repr(text)
        assert tok.encode(text, max_tokens=10) == ids[:10], repr(text)


def test_fast_path_equals_reference_on_captions(tok: Tokenizer, ref: ReferenceTokenizer) -> None:
    texts = synthetic_captions(2000, seed=5)
    rows = tok(texts).tolist()
    for text, row in zip(texts, rows):
        expected = ref.tokens(text)
        assert row == expected + [0] * (77 - len(expected)), text


def test_long_texts_first_ids_equal_reference(
    tok: Tokenizer, ref: ReferenceTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small first cut (it is at least 4 * 76 * 32 = 9,728 characters) and a small ceiling, so that
    # texts of some ten thousand characters exercise the cut, the hard cut and the widening.
    monkeypatch.setattr(core, "_RAW_CAP", 1024)
    monkeypatch.setattr(core, "_RAW_CAP_MAX", 40_000)
    r = random.Random(1)
    texts = [sep.join(mixed_unicode_texts(r.randint(400, 500), seed=k)) for k, sep in enumerate(["", " ", "\n"])]
    texts += ["\u3000" * 12_000 + "after 12,000 ideographic spaces", "\x01" * 50_000 + "after control characters",
              "é" * 15_000, "日本" * 6000 + " tail", " " * 12_000 + "late words", "!" * 3000, "x" * 3000 + " tail"]
    rows = tok(texts).tolist()
    for text, row in zip(texts, rows):
        expected = ref.tokens(text)
        assert row == expected + [0] * (77 - len(expected)), repr(text[:50])


def test_merge_loop_equals_openai_loop_on_real_vocabulary(tok: Tokenizer) -> None:
    r = random.Random(2)
    alphabet = "etaoinshrdlucmfwypvbgkqjxz" * 3 + "0123456789!?éü日本😀 "
    ranks = tok.vocab.ranks
    for n in [*range(1, 30), 60, 200, 1000]:
        word = "".join(r.choice(alphabet) for _ in range(n))
        token = "".join(byte_symbols(word))
        symbols = list(token[:-1]) + [token[-1] + "</w>"]
        assert tuple(merge_symbols(symbols, ranks)) == reference_bpe(token, ranks), word


def test_merge_loop_equals_openai_loop_on_adversarial_merges() -> None:
    """Random merge lists where the same string is built by several merges and later merges can
    outrank the pieces they use: the phase order of OpenAI's loop must still be reproduced."""
    r = random.Random(3)
    for _ in range(300):
        symbols = ["a", "b", "c", "a</w>", "b</w>", "c</w>"]
        merges = []
        for _ in range(r.randint(1, 25)):
            left = r.choice([s for s in symbols if not s.endswith("</w>")])
            merges.append((left, r.choice(symbols)))
            symbols.append("".join(merges[-1]))
        r.shuffle(merges)
        ranks = {pair: i for i, pair in enumerate(merges)}
        for _ in range(20):
            token = "".join(r.choice("abc") for _ in range(r.randint(1, 30)))
            symbols_in = list(token[:-1]) + [token[-1] + "</w>"]
            assert tuple(merge_symbols(symbols_in, ranks)) == reference_bpe(token, ranks), (token, merges)
