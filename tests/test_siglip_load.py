"""SigLIP models end to end: a local folder in transformers' layout (what ``hf-hub:google/siglip-*``
downloads) loads with ``clipforge.load`` with its tokenizer and preprocessing; ``clipforge.save`` /
``load`` round-trip; ``clipforge train`` trains one; the fast paths, ONNX export and the zero-shot
service work for the family unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import clipforge
from clipforge.hf import to_hf
from clipforge.hf_siglip import to_hf as siglip_to_hf
from clipforge.tokenizer.pieces import GemmaTokenizer, SigLIPTokenizer, train_sentencepiece

transformers = pytest.importorskip("transformers")
CAPTIONS = ["a red circle", "two small green stars on a white background", "a big blue heart", "an orange cross"] * 40
TEXTS = ["A photo of a RED circle!", "two green stars", "x " * 40]


def _random_siglip(vocab_size: int):
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-siglip", text={"vocab_size": vocab_size})
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def _hf_ids(hf_tokenizer, texts, length):
    return hf_tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids


def _hf_siglip_dir(out, vocab_dir):
    """A random SigLIP saved in transformers' layout with a SentencePiece vocabulary learned here."""
    ours_tok = train_sentencepiece(CAPTIONS, 300, context_length=16)
    ours_tok.save(vocab_dir)
    hf_tok = transformers.SiglipTokenizer(str(vocab_dir / "spiece.model"), model_max_length=16)
    hf = to_hf(_random_siglip(ours_tok.vocab_size))
    hf.save_pretrained(out)
    hf_tok.save_pretrained(out)
    return hf, hf_tok


def test_a_transformers_siglip_directory_loads_with_its_tokenizer(tmp_path):
    """The layout of google/siglip-base-patch16-224: config.json (model_type "siglip"), model.safetensors,
    spiece.model, tokenizer_config.json."""
    hf, hf_tok = _hf_siglip_dir(tmp_path / "hf", tmp_path / "vocab")
    model, preprocess, tokenizer = clipforge.load(tmp_path / "hf")
    assert isinstance(tokenizer, SigLIPTokenizer) and tokenizer.context_length == 16
    tokens = tokenizer(TEXTS)
    assert torch.equal(tokens, _hf_ids(hf_tok, TEXTS, 16))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    pixels = preprocess(image).unsqueeze(0)
    assert pixels.shape == (1, 3, 32, 32) and preprocess.resize == "squash"
    with torch.no_grad():
        hf_out = hf(input_ids=tokens, pixel_values=pixels)
        torch.testing.assert_close(model.logits(pixels, tokens)[0], hf_out.logits_per_image, atol=1e-4, rtol=1e-5)
    clipforge.save(model, tmp_path / "ours", tokenizer)  # our format: its config.json, the same tokenizer files
    again, _, again_tok = clipforge.load(tmp_path / "ours")
    assert again.config == model.config and torch.equal(again_tok(TEXTS), tokens)


def test_hf_hub_siglip_repository_loads_from_the_cache_offline(tmp_path, monkeypatch):
    """``hf-hub:google/siglip-*`` in huggingface_hub's cache (HF_HUB_OFFLINE=1): the resolver fetches the
    configs, the SentencePiece model and the weights; the directory loads as transformers' layout."""
    from clipforge import hub
    from hub_fixtures import write_hf_cache

    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf, hf_tok = _hf_siglip_dir(tmp_path / "hf", tmp_path / "vocab")
    write_hf_cache(hub.hub_cache(), "test-org/siglip-tiny", {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()})
    model, _, tokenizer = clipforge.load("hf-hub:test-org/siglip-tiny")
    assert isinstance(tokenizer, SigLIPTokenizer) and torch.equal(tokenizer(TEXTS), _hf_ids(hf_tok, TEXTS, 16))
    assert model.config.vision.kind == "siglip" and model.logit_bias is not None


def test_a_transformers_siglip2_naflex_directory_loads(tmp_path):
    """SigLIP 2 NaFlex (model_type "siglip2", Siglip2Model) with a Gemma-style tokenizer.json."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{c: 4 + i for i, c in enumerate("▁abcdefghijklmnopqrstuvwxyz")}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    gemma = GemmaTokenizer(backend.to_str(), context_length=16)
    hf = siglip_to_hf(_random_siglip(gemma.vocab_size), naflex=True)
    hf.save_pretrained(tmp_path / "hf")
    gemma.save(tmp_path / "hf")
    model, _, tokenizer = clipforge.load(tmp_path / "hf")
    assert isinstance(tokenizer, GemmaTokenizer) and model.image_size == 32  # sqrt(16 patches) · 8 px
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert torch.equal(tokenizer(TEXTS), _hf_ids(hf_tok, TEXTS, 16))
    with torch.no_grad():
        expected = hf.get_text_features(input_ids=tokenizer(TEXTS)).pooler_output
        torch.testing.assert_close(model.encode_text(tokenizer(TEXTS)), expected, atol=1e-5, rtol=1e-5)


def test_a_siglip_model_without_its_tokenizer_says_so(tmp_path):
    clipforge.save(_random_siglip(300), tmp_path)
    with pytest.raises(clipforge.api.CheckpointError, match="spiece.model"):
        clipforge.load(tmp_path)


def test_fast_paths_and_sigmoid_classification():
    from clipforge.fastpath import InferenceOptions, optimize_for_inference, trims_exactly
    from clipforge.serve.encoder import Encoder

    model = _random_siglip(300)
    assert not trims_exactly(model)  # bidirectional, read at the last position
    images, tokens = torch.randn(5, 3, 32, 32), torch.randint(0, 300, (7, 16))
    with torch.no_grad():
        fast = optimize_for_inference(model, InferenceOptions(chunk_rows=32))
        torch.testing.assert_close(fast.encode_image(images), model.encode_image(images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fast.encode_text(tokens), model.encode_text(tokens), atol=1e-5, rtol=1e-5)
    tokenizer = train_sentencepiece(CAPTIONS, 300, context_length=16)
    encoder = Encoder(model, clipforge.transforms.preprocess_for(model.config), tokenizer)
    probs, cosine = encoder.classify(encoder.encode_images([Image.new("RGB", (50, 40), (200, 0, 0))]),
                                     ["red circle", "blue heart", "green star"])
    scale, bias = model.logit_scale.exp().item(), model.logit_bias.item()
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-(scale * cosine + bias))), rtol=1e-5)


@pytest.mark.slow
def test_onnx_export_of_a_siglip_model(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from clipforge.export import check_onnx, export_onnx

    model = _random_siglip(300)
    export_onnx(model, tmp_path)
    assert max(check_onnx(model, tmp_path).values()) < 1e-4  # onnxruntime against PyTorch, both towers
    meta = json.loads((tmp_path / "onnx.json").read_text())
    assert meta["logit_bias"] == pytest.approx(model.logit_bias.item()) and meta["to_rgb"] == "first_white"


@pytest.mark.slow
def test_clipforge_train_trains_a_siglip_model(tmp_path):
    """The SigLIP recipe (demo-siglip's family, a learned SentencePiece vocabulary, the sigmoid loss)
    at test size: trains, evaluates zero-shot, and its final model loads with that vocabulary."""
    from clipforge.cli import main
    from clipforge.data.synthetic import WorldConfig, generate_world
    from clipforge.train.logging import read_metrics

    world = tmp_path / "world"
    generate_world(world, WorldConfig(num_train=128, num_val=0, shard_size=32, eval_per_class=2, num_retrieval=4),
                   workers=1)
    sets = {"model.name": "tiny-siglip", "run.steps": 6, "run.max_seconds": "none", "data.batch_size": 16,
            "data.workers": 0, "data.shards": f"{world}/train/{{00000..00003}}.tar", "checkpoint.every": 0,
            "tokenizer.captions": f"{world}/train/captions.txt", "eval.every": 6, "eval.data": f"{world}/eval/heldout"}
    args = ["train", "--config", "configs/siglip_demo.toml", "--out", str(tmp_path / "run")]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    assert main(args) == 0
    records = read_metrics(tmp_path / "run")
    assert len(records) == 6 and all(np.isfinite(r["loss"]) and "logit_bias" in r for r in records)
    assert records[-1]["loss"] < records[0]["loss"]
    assert [r["step"] for r in read_metrics(tmp_path / "run", "eval")] == [6]
    model, _, tokenizer = clipforge.load(tmp_path / "run" / "final")
    assert isinstance(tokenizer, SigLIPTokenizer) and tokenizer.vocab_size == model.config.text.vocab_size
    assert model.config.text.kind == "siglip" and model.logit_bias is not None
