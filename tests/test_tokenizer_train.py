"""BPE vocabulary training: layout, exactness of the incremental counts, determinism, CLI."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from clipforge.cli import main as cli_main
from clipforge.tokenizer import SPECIAL_TOKENS, Tokenizer, train_bpe
from clipforge.tokenizer.bpe import END_OF_WORD, byte_symbols, bytes_to_unicode
from clipforge.tokenizer.cleaning import clean_text, compile_pattern
from clipforge.tokenizer.samples import mixed_unicode_texts, synthetic_captions
from clipforge.tokenizer.train import _merge_pair, count_words, learn_merges


def naive_merges(word_counts: dict[str, int], num_merges: int, min_frequency: int) -> list[tuple[str, str]]:
    """Textbook BPE: recount every pair of every word at each step (same tie-break)."""
    words = {w: tuple(byte_symbols(w)[:-1]) + (byte_symbols(w)[-1] + END_OF_WORD,) for w in word_counts}
    merges = []
    while len(merges) < num_merges:
        counts: Counter[tuple[str, str]] = Counter()
        for w, symbols in words.items():
            for pair in zip(symbols, symbols[1:]):
                counts[pair] += word_counts[w]
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        if counts[best] < min_frequency:
            break
        merges.append(best)
        words = {w: _merge_pair(s, *best) for w, s in words.items()}
    return merges


def test_incremental_counts_equal_naive_recount() -> None:
    texts = synthetic_captions(200, seed=2) + mixed_unicode_texts(60, seed=2)
    counts = count_words(texts)
    for min_frequency, num_merges in ((1, 250), (3, 1000)):  # the second stops on min_frequency
        assert learn_merges(counts, num_merges, min_frequency) == naive_merges(counts, num_merges, min_frequency)


def test_layout_and_round_trip() -> None:
    captions = synthetic_captions(3000, seed=1)
    tok = train_bpe(captions, vocab_size=700)
    assert tok.vocab_size == 700 and len(tok.vocab.merges) == 700 - 514
    assert (tok.sot_token_id, tok.eot_token_id, tok.pad_token_id) == (698, 699, 0)
    assert tok.vocab.id_to_token[:256] == list(bytes_to_unicode().values())  # OpenAI's layout
    assert tok.vocab.id_to_token[-2:] == ["<start_of_text>", "<end_of_text>"]
    assert tok.encode("a photo of a kitchen")[-3:] == [tok.vocab.token_to_id[w] for w in ("of</w>", "a</w>", "kitchen</w>")]
    rows = tok(captions[:50], context_length=32)
    assert rows.shape == (50, 32) and int(rows.max()) == tok.eot_token_id
    assert tok.decode(tok.encode("Two dogs, 1 café!")) == "two dogs , 1 café !"


def test_stops_when_no_pair_is_left() -> None:
    tok = train_bpe(["aa bb"] * 3, vocab_size=10_000)
    assert [m for m in tok.vocab.merges] == [("a", "a</w>"), ("b", "b</w>")]
    assert tok.vocab_size == 516


@pytest.mark.slow
def test_deterministic_across_hash_seeds_and_input_order() -> None:
    texts = synthetic_captions(500, seed=4) + mixed_unicode_texts(300, seed=4)
    shuffled = texts[:]
    random.Random(0).shuffle(shuffled)
    assert train_bpe(texts, 900).vocab.merges == train_bpe(shuffled, 900).vocab.merges
    # The child skips clipforge/__init__ (it imports torch, seconds on a busy machine): the
    # tokenizer package needs neither it nor torch.
    code = ("import importlib.util, sys, types; pkg = types.ModuleType('clipforge'); "
            "pkg.__path__ = list(importlib.util.find_spec('clipforge').submodule_search_locations); "
            "sys.modules['clipforge'] = pkg; "
            "from clipforge.tokenizer import train_bpe; from clipforge.tokenizer.samples import *; "
            "t = synthetic_captions(500, seed=4) + mixed_unicode_texts(300, seed=4); "
            "print(hash('x'), 'torch' in sys.modules, train_bpe(t, 900).vocab.merges)")
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        outs.append(out.stdout.split(" ", 2))
    assert outs[0][0] != outs[1][0]  # the hash seeds did differ
    assert outs[0][1] == outs[1][1] == "False"
    assert outs[0][2] == outs[1][2] == f"{train_bpe(texts, 900).vocab.merges}\n"


def test_errors() -> None:
    with pytest.raises(ValueError, match="at least 514"):
        train_bpe(["a"], vocab_size=100)
    with pytest.raises(TypeError, match="index 1"):
        train_bpe(["a", 5], vocab_size=600)


def test_cli_train_then_encode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(synthetic_captions(2000, seed=3)) + "\n", encoding="utf-8")
    out = tmp_path / "tok"
    assert cli_main(["tokenizer", "train", "--input", str(captions), "--vocab-size", "600", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["vocab_size"] == 600 and report["captions"] == 2000
    tok = Tokenizer.from_directory(out)
    assert tok.vocab_size == 600
    assert cli_main(["tokenizer", "encode", "--vocab", str(out), "a red dog"]) == 0
    assert capsys.readouterr().out.split() == [str(i) for i in tok.encode("a red dog")]
    assert cli_main(["tokenizer", "encode", "--vocab", str(out), "--context-length", "6", "a red dog"]) == 0
    assert capsys.readouterr().out.split() == [str(i) for i in tok.tokenize_numpy("a red dog", 6)[0]]


def test_trained_vocabulary_round_trips_any_text() -> None:
    texts = mixed_unicode_texts(400, seed=7) + synthetic_captions(400)
    tok = train_bpe(texts, 1500, min_frequency=1)
    pattern = compile_pattern(SPECIAL_TOKENS)
    for text in texts:
        words = [w for w in pattern.findall(clean_text(text)) if w not in SPECIAL_TOKENS]
        ids = [i for i in tok.encode(text) if i < tok.sot_token_id]
        assert tok.decode(ids) == " ".join(words), repr(text)
