"""SigLIP's tokenizers, id for id with transformers' on the same vocabulary file.

The vocabularies are learned here with the sentencepiece trainer (a SigLIP-style unigram model with
T5's ids, a Gemma-style byte-fallback BPE model converted by transformers to its tokenizer.json), and
the texts are the shared reference cases (unicode, emoji, HTML entities, very long texts) plus
special-token, whitespace and punctuation edge cases.
"""

from __future__ import annotations

import io
import json
import pickle
import random

import pytest
import torch

from clipforge.tokenizer import TextTooLongError, is_saved_tokenizer, load_tokenizer
from clipforge.tokenizer.pieces import GemmaTokenizer, SigLIPTokenizer, train_sentencepiece

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")
EDGES = ["hello </s> world", "</s>a", "a</s>", " </s> ", "<unk> x <unk>", "▁▁ a ▁b", "", "   ", "x " * 100,
         "A.B,C!", "tab\there\nnew line", "A Photo Of A CAT.", "<eos> and <pad>", "ÀÉÎ straße ǅ"]


@pytest.fixture(scope="module")
def texts(reference_dir):
    cases = [json.loads(line)["text"] for line in (reference_dir / "tokenizer" / "cases.jsonl").open()]
    return cases + EDGES


def _corpus() -> list[str]:
    rng = random.Random(0)
    common = "a photo of the red green blue circle square star heart cross small big two dog cat on in".split()

    def word():
        if rng.random() < 0.5:
            return rng.choice(common)
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyzé") for _ in range(rng.randint(2, 8)))

    return [" ".join(word() for _ in range(rng.randint(3, 12))) + rng.choice([".", "!", "", ","]) for _ in range(3000)]


@pytest.fixture(scope="module")
def siglip_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("spm") / "spiece.model"
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_corpus()), model_writer=out, vocab_size=400,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    path.write_bytes(out.getvalue())
    return path


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    """A Gemma-style vocabulary (byte-fallback BPE, <pad> 0, <eos> 1, <bos> 2, <unk> 3), saved by
    transformers' Siglip2Tokenizer as its tokenizer.json."""
    root = tmp_path_factory.mktemp("gemma")
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=out, vocab_size=500, model_type="bpe", byte_fallback=True,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
        normalization_rule_name="identity", user_defined_symbols=["<mask>"], minloglevel=2)
    (root / "model").mkdir()
    (root / "model" / "tokenizer.model").write_bytes(out.getvalue())
    hf = transformers.Siglip2Tokenizer.from_pretrained(root / "model")
    hf.save_pretrained(root / "saved")
    return root / "saved"


def _hf_ids(hf, texts, length):
    return hf(texts, padding="max_length", max_length=length, truncation=True).input_ids


@pytest.mark.parametrize("length", [64, 16])
def test_siglip_ids_equal_siglip_tokenizer(siglip_model, texts, length):
    hf = transformers.SiglipTokenizer(str(siglip_model))
    ours = SigLIPTokenizer.from_file(siglip_model, length)
    got = ours(texts)
    assert got.shape == (len(texts), length) and got.dtype == torch.long
    assert got.tolist() == _hf_ids(hf, texts, length)
    assert (got[:, -1] == 1).all()  # EOS or its padding (</s>, id 1) in the last slot: what the tower reads


def test_siglip_directory_with_stripping_special_tokens(siglip_model, texts, tmp_path):
    """The released tokenizer_config.json strips the whitespace around </s> and <unk>: the same ids
    (every part is stripped by the canonicalisation anyway)."""
    transformers.SiglipTokenizer(str(siglip_model)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    for token in config["added_tokens_decoder"].values():
        token.update(lstrip=True, rstrip=True)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = load_tokenizer(tmp_path, 64)
    assert isinstance(ours, SigLIPTokenizer)
    assert ours(texts).tolist() == _hf_ids(hf, texts, 64)


def test_siglip_rules(siglip_model):
    tok = SigLIPTokenizer.from_file(siglip_model, 8)
    assert tok(["A Photo, of a CAT!"]).tolist() == tok(["a photo of a cat"]).tolist()  # case, punctuation
    long = " ".join(["cat"] * 50)
    ids = tok([long])[0]
    assert ids[-1] == tok.eos_token_id and (ids[:-1] != tok.pad_token_id).all()  # sticky EOS
    with pytest.raises(TextTooLongError, match="index 1"):
        tok(["cat", long], truncate=False)
    with pytest.raises(TypeError, match="index 0"):
        tok([3])
    again = pickle.loads(pickle.dumps(tok))  # DataLoader workers
    assert again([long]).tolist() == tok([long]).tolist() and again.context_length == 8


def test_gemma_ids_equal_siglip2_tokenizer(gemma_dir, texts):
    # SigLIP 2 as big_vision trained it: lowercase, no BOS, EOS (1) kept last, <pad> (0) on the right.
    hf = transformers.Siglip2Tokenizer.from_pretrained(gemma_dir, add_bos_token=False, add_eos_token=True,
                                                       padding_side="right")
    ours = load_tokenizer(gemma_dir, 64)
    assert isinstance(ours, GemmaTokenizer) and (ours.eos_token_id, ours.pad_token_id) == (1, 0)
    got = ours(texts)
    assert got.tolist() == _hf_ids(hf, texts, 64)
    assert ours(["A RED Star"]).tolist() == ours(["a red star"]).tolist()
    assert pickle.loads(pickle.dumps(ours))(texts[:5]).tolist() == got[:5].tolist()


def test_saved_tokenizers_reload_and_open_in_transformers(siglip_model, gemma_dir, texts, tmp_path):
    for name, tok in (("siglip", SigLIPTokenizer.from_file(siglip_model, 64)), ("gemma", load_tokenizer(gemma_dir))):
        tok.save(tmp_path / name)
        assert is_saved_tokenizer(tmp_path / name)
        again = load_tokenizer(tmp_path / name)
        assert type(again) is type(tok) and again.context_length == 64
        assert again(texts).tolist() == tok(texts).tolist()
        hf = transformers.AutoTokenizer.from_pretrained(tmp_path / name)
        assert _hf_ids(hf, texts, 64) == tok(texts).tolist()
    assert not is_saved_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="no saved tokenizer"):
        load_tokenizer(tmp_path)


def test_learned_sentencepiece_vocabulary(tmp_path):
    captions = ["A red circle.", "two small green stars", "a big blue heart!"] * 50
    tok = train_sentencepiece(captions, vocab_size=2048, context_length=12)
    assert tok.vocab_size < 2048 and tok.eos_token_id == 1 and tok.pad_token_id == 1  # an upper bound; T5's ids
    again = train_sentencepiece(captions, vocab_size=2048, context_length=12)
    assert again.model == tok.model  # deterministic
    ids = tok(["a red circle"])[0].tolist()
    assert ids[ids.index(1):] == [1] * (12 - ids.index(1)) and 2 not in ids  # EOS, padding; no unknown piece
