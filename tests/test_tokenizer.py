"""Tokenizer API and OpenAI parity on the shared fixture (tests/test_tokenizer_parity.py goes wider)."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import clipforge.tokenizer as tokmod
from clipforge.tokenizer import (
    SPECIAL_TOKENS, TextTooLongError, Tokenizer, download_openai_vocab, resolve_openai_vocab, tokenize,
)
from clipforge.tokenizer.cleaning import clean_text, compile_pattern
from clipforge.tokenizer.openai_vocab import OPENAI_VOCAB_FILENAME, OPENAI_VOCAB_SHA256
from clipforge.tokenizer.samples import mixed_unicode_texts, synthetic_captions

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def vocab_path(reference_dir: Path) -> Path:
    return reference_dir / "tokenizer" / OPENAI_VOCAB_FILENAME


@pytest.fixture(scope="module")
def tok(vocab_path: Path) -> Tokenizer:
    return Tokenizer.openai(vocab_path)


@pytest.fixture(scope="module")
def cases(reference_dir: Path) -> list[dict]:
    lines = (reference_dir / "tokenizer" / "cases.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def expected_row(ids: list[int], context: int = 77) -> list[int]:
    """open_clip's row: SOT, ids, EOT, zeros; when too long the last slot is overwritten by EOT."""
    tokens = [SOT, *ids, EOT]
    if len(tokens) > context:
        tokens = tokens[:context]
        tokens[-1] = EOT
    return tokens + [0] * (context - len(tokens))


def test_vocabulary_layout(tok: Tokenizer) -> None:
    assert (tok.vocab_size, tok.sot_token_id, tok.eot_token_id, tok.pad_token_id) == (49408, SOT, EOT, 0)
    assert tok.context_length == 77 and len(tok.vocab.merges) == 48894
    assert tok.vocab.id_to_token[:3] == ["!", '"', "#"] and tok.vocab.id_to_token[256] == "!</w>"


def test_fixture_ids_and_rows(tok: Tokenizer, cases: list[dict]) -> None:
    rows = tok([c["text"] for c in cases])
    assert rows.dtype == torch.long and rows.shape == (len(cases), 77)
    for i, case in enumerate(cases):
        assert tok.encode(case["text"]) == case["ids"], case["text"]
        row = rows[i].tolist()
        assert row == expected_row(case["ids"]), case["text"]
        # The fixture stores row[:count_nonzero(row)], which drops EOT when id 0 ('!') occurs inside.
        assert row[: np.count_nonzero(row)] == case["tokens77"], case["text"]


def test_single_string_and_context_length(tok: Tokenizer) -> None:
    one = tok("a photo of a cat")
    assert one.shape == (1, 77) and one[0, :7].tolist() == [SOT, 320, 1125, 539, 320, 2368, EOT]
    assert tok("a photo of a cat", context_length=10).shape == (1, 10)
    assert tok([]).shape == (0, 77)
    with pytest.raises(ValueError):
        tok("x", context_length=1)


def test_truncation_keeps_eot_in_last_slot(tok: Tokenizer) -> None:
    text = " ".join(synthetic_captions(30))
    ids = tok.encode(text)
    assert len(ids) > 75
    row = tok(text)[0].tolist()
    assert row == [SOT, *ids[:75], EOT]
    short = tok(text, context_length=8)[0].tolist()
    assert short == [SOT, *ids[:6], EOT]


def test_truncate_false_names_index_and_length(tok: Tokenizer) -> None:
    long_plain = "word " * 100
    with pytest.raises(TextTooLongError, match=r"index 1 \(length 500 characters\).*102 tokens"):
        tok(["ok", long_plain], truncate=False)
    long_unicode = "café " * 2000  # takes the per-text path, which stops counting at the context
    with pytest.raises(ValueError, match=r"index 0 \(length 10000 characters\).*more than 77 tokens"):
        tok([long_unicode], truncate=False)
    assert issubclass(TextTooLongError, RuntimeError)  # what OpenAI's clip.tokenize raises
    exact = "a " * 75  # SOT + 75 + EOT fits exactly
    assert tok(exact, truncate=False)[0, -1].item() == EOT


def test_non_string_raises_type_error_naming_index(tok: Tokenizer) -> None:
    for bad in (3, None, b"bytes", ["nested"]):
        with pytest.raises(TypeError, match="index 2"):
            tok(["a", "b", bad, "d"])
    with pytest.raises(TypeError):
        tok.encode(b"bytes")


@pytest.mark.parametrize("text", ["", " ", "   \t\n  ", "\n", "\u3000\xa0", "\x00\x01", "\x1c\x1f"])
def test_empty_and_whitespace_give_sot_eot(tok: Tokenizer, text: str) -> None:
    assert tok(text)[0, :3].tolist() == [SOT, EOT, 0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["words", "one_word", "cjk", "mixed", "space_run", "emoji"])
def test_ten_megabyte_text_is_bounded_and_ends_with_eot(tok: Tokenizer, kind: str) -> None:
    n = 10_000_000
    unit = {
        "words": "a photo of a cat ", "one_word": "a", "cjk": "日本語", "emoji": "😀",
        "mixed": " ".join(mixed_unicode_texts(200, seed=3)), "space_run": " ",
    }[kind]
    text = (unit * (n // len(unit) + 1))[:n]
    if kind == "space_run":
        text = text[:-11] + "hello world"
    row = tok([text, "a cat"])[0].tolist()
    if kind == "space_run":
        assert row[:4] == [SOT, 3306, 1002, EOT]
    else:  # the context is full: SOT, 75 ids, EOT in the last slot
        assert row[0] == SOT and row[-1] == EOT
    if kind in ("words", "mixed"):
        assert row == tok(text[:20_000])[0].tolist()  # the first ids come from the start of the text


def test_encode_max_tokens_is_a_prefix(tok: Tokenizer) -> None:
    for text in mixed_unicode_texts(200, seed=4) + synthetic_captions(50):
        full = tok.encode(text)
        for k in (1, 3, 76):
            assert tok.encode(text, max_tokens=k) == full[:k]


def test_batch_mixing_fast_and_slow_paths_matches_single_calls(
    tok: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokmod.core, "_SLAB", 7)  # several slabs of plain texts
    texts = synthetic_captions(20) + mixed_unicode_texts(20, seed=9) + ["x" * 5000, "café " * 1000, ""]
    batch = tok(texts)
    for i, text in enumerate(texts):
        assert batch[i].tolist() == tok([text])[0].tolist() == expected_row(tok.encode(text))


def test_special_token_strings_encode_as_special_ids(tok: Tokenizer) -> None:
    # open_clip's regex lists the special tokens first, so their text becomes their id
    b = tok.encode("b")
    assert tok.encode("a <start_of_text> b <END_OF_TEXT>") == [320, SOT, *b, EOT]
    assert SOT not in tok.encode("<ſtart_of_text>")  # matched by the regex (IGNORECASE) but not special


def test_decode(tok: Tokenizer) -> None:
    # OpenAI's decode turns every `</w>` into a space: the words of the pre-tokenizer come back
    texts = synthetic_captions(50, seed=1) + ["naïve café 😀 x² ｶﾀｶﾅ", "<b>&amp;</b> 1992"]
    words = [" ".join(compile_pattern(SPECIAL_TOKENS).findall(clean_text(t))) for t in texts]
    assert tok.decode(tok(texts)) == words
    assert tok.decode([SOT, 320, 2368, EOT, 0, 0]) == "a cat"
    assert tok.decode(tok.encode("naïve café 😀")) == "naïve café 😀"


def test_save_and_load_round_trip(tok: Tokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer.json").read_text())
    assert config["num_merges"] == 48894 and config["vocab_size"] == 49408
    assert gzip.decompress((tmp_path / "bpe_merges.txt.gz").read_bytes()).startswith(b"#version: 0.2\ni n\n")
    loaded = Tokenizer.from_directory(tmp_path)
    texts = mixed_unicode_texts(100, seed=2)
    assert torch.equal(loaded(texts), tok(texts))
    plain = tmp_path / "merges.txt"  # any merges file, uncompressed
    plain.write_bytes(gzip.decompress((tmp_path / "bpe_merges.txt.gz").read_bytes()))
    assert torch.equal(Tokenizer.from_merges(plain)(texts), tok(texts))


def test_pickle_round_trip(tok: Tokenizer) -> None:
    clone = pickle.loads(pickle.dumps(tok))
    assert torch.equal(clone(["a cat", "naïve"]), tok(["a cat", "naïve"]))


def test_openai_vocab_resolution(vocab_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPFORGE_OPENAI_VOCAB", raising=False)
    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="download_openai_vocab"):
        resolve_openai_vocab()
    assert resolve_openai_vocab(vocab_path) == vocab_path
    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path))
    (tmp_path / OPENAI_VOCAB_FILENAME).symlink_to(vocab_path)
    assert resolve_openai_vocab() == tmp_path / OPENAI_VOCAB_FILENAME
    monkeypatch.setenv("CLIPFORGE_OPENAI_VOCAB", str(vocab_path))
    assert resolve_openai_vocab() == vocab_path
    monkeypatch.setenv("CLIPFORGE_OPENAI_VOCAB", str(tmp_path / "missing.gz"))
    with pytest.raises(FileNotFoundError, match="CLIPFORGE_OPENAI_VOCAB"):
        resolve_openai_vocab()


def test_module_level_tokenize(vocab_path: Path, tok: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPFORGE_OPENAI_VOCAB", str(vocab_path))
    texts = ["a photo of a cat", "Ａ ｄｏｇ"]
    assert torch.equal(tokenize(texts), tok(texts))
    assert tokenize("x", context_length=5).shape == (1, 5)
    assert tokmod.openai_tokenizer() is tokmod.openai_tokenizer()  # loaded once


def test_download_checks_sha256(vocab_path: Path, tmp_path: Path) -> None:
    url = vocab_path.resolve().as_uri()  # a local file: tests never touch the network
    got = download_openai_vocab(tmp_path / "a", url=url)
    assert got.read_bytes() == vocab_path.read_bytes() and got.name == OPENAI_VOCAB_FILENAME
    with pytest.raises(OSError, match="checksum"):
        download_openai_vocab(tmp_path / "b", url=url, sha256="0" * 64)
    assert not any((tmp_path / "b").iterdir())  # nothing half-written is left behind
    assert OPENAI_VOCAB_SHA256 == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
