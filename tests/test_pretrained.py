"""Pretrained tags: the table agrees with open_clip 3.3's (tests/fixtures/openclip/tags.json) on every
hub repository, URL, preprocessing and activation; ``load(name, pretrained=tag)`` builds the architecture
the weights were trained as and loads them from huggingface_hub's cache offline; ``clipforge models
--pretrained`` lists every tag with its source and reported ImageNet top-1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import clipforge
from clipforge import hub
from clipforge.checkpoint import CheckpointError
from clipforge.config import PreprocessConfig
from clipforge.registry import get_config
from clipforge.zoo import pretrained
from hub_fixtures import safetensors_bytes, write_hf_cache

OPEN_CLIP = json.loads((Path(__file__).resolve().parent / "fixtures" / "openclip" / "tags.json").read_text())["tags"]
# Where this table knowingly differs from open_clip's: (model, tag) → the field and why.
DIFFERS = {("ViT-B-16-plus-240", "laion400m_e32"): "hf_hub"}  # open_clip points it at the e31 repository


@pytest.mark.parametrize("row", OPEN_CLIP, ids=[f"{r['model']}:{r['tag']}" for r in OPEN_CLIP])
def test_every_open_clip_tag_of_a_registered_architecture_resolves_to_the_same_weights(row):
    entry = pretrained.get_pretrained(row["model"], row["tag"])
    assert entry.url == row["url"]
    if DIFFERS.get((row["model"], row["tag"])) == "hf_hub":
        assert entry.hf_hub == "" and entry.source == row["url"]
    else:
        assert entry.hf_hub == row["hf_hub"].rstrip("/")
    p = entry.preprocess
    assert (list(p.mean), list(p.std), p.interpolation, p.resize) == (row["mean"], row["std"], row["interpolation"],
                                                                      row["resize_mode"])
    # The activation the weights were trained with (for the ResNets only the text tower has one).
    assert get_config(entry.architecture).text.act == ("quick_gelu" if row["quick_gelu"] else "gelu")


def test_every_entry_is_one_open_clip_lists_with_a_reported_figure():
    listed = {(r["model"], r["tag"]) for r in OPEN_CLIP}
    entries = pretrained.list_pretrained()
    assert len(entries) == len({(r["hf_hub"], r["url"], r["tag"]) for r in OPEN_CLIP})  # one per weight set
    for entry in entries:
        assert (entry.model, entry.tag) in listed, entry
        assert entry.reported_by in pretrained.SOURCES and 0 < entry.imagenet_top1 < 100, entry
    assert pretrained.get_pretrained("ViT-H-14", "laion2b_s32b_b79k").imagenet_top1 == 77.96


def test_a_tag_builds_the_architecture_its_weights_were_trained_as():
    assert pretrained.get_pretrained("ViT-H-14", "dfn5b").architecture == "ViT-H-14-quickgelu"
    assert pretrained.get_pretrained("ViT-B-32", "openai").architecture == "ViT-B/32"
    assert pretrained.get_pretrained("ViT-B/32", "openai").source == hub.OPENAI_URLS["ViT-B/32"]
    assert pretrained.get_pretrained("RN50", "yfcc15m").architecture == "RN50"
    with pytest.raises(KeyError, match="no pretrained tag 'laion5b' for 'ViT-H-14'; its tags: laion2b_s32b_b79k"):
        pretrained.get_pretrained("ViT-H-14", "laion5b")


@pytest.fixture
def fake_tag(tmp_path, monkeypatch, reference_dir):
    """A tag for tiny-vit whose weights sit in huggingface_hub's cache (offline), Inception statistics."""
    from safetensors.torch import load_file

    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CLIPFORGE_OPENAI_VOCAB", str(reference_dir / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"))
    state = load_file(str(reference_dir / "parity" / "tiny_vit.safetensors"))
    write_hf_cache(hub.hub_cache(), "clipforge-test/tiny-vit", {"open_clip_model.safetensors": safetensors_bytes(state)})
    entry = pretrained.register_pretrained(pretrained.Pretrained(
        "tiny-vit", "test_tag", "clipforge-test/tiny-vit", imagenet_top1=1.0,
        preprocess=PreprocessConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))))
    yield entry, state
    del pretrained._TAGS[(entry.architecture, entry.tag)]


def test_load_by_tag_from_the_cache(fake_tag):
    entry, state = fake_tag
    model, preprocess, tokenizer = clipforge.load("tiny-vit", pretrained="test-tag")  # open_clip's tag spelling rule
    assert model.config == get_config("tiny-vit").replace(preprocess=entry.preprocess)
    assert preprocess.mean == (0.5, 0.5, 0.5) and tokenizer is not None
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_names_without_weights_and_unknown_tags_are_clear_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="ViT-H-14: OpenAI released no weights .* pretrained=, one of: laion2b_s32b_b79k"):
        clipforge.load("ViT-H-14")
    with pytest.raises(CheckpointError, match="no pretrained tag 'nope' for 'ViT-g-14'"):
        clipforge.load("ViT-g-14", pretrained="nope")
    with pytest.raises(hub.DownloadError, match=r"not on the Hugging Face Hub .* released at https://github\.com/.*e32-699c4b84"):
        clipforge.load("ViT-B-16-plus-240", pretrained="laion400m_e32")  # listed, but not downloadable here
    assert not any(tmp_path.iterdir())  # nothing was fetched or written


def test_models_command_lists_every_tag(capsys):
    from clipforge.cli import main

    assert main(["models", "--pretrained"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["architecture", "tag"]
    assert any(line.split()[:3] == ["ViT-H-14", "laion2b_s32b_b79k", "77.96%"]
               and "hf-hub:laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in line for line in lines)
    assert any("laion400m_e32" in line and "vit_b_16_plus_240-laion400m_e32-699c4b84.pt" in line for line in lines)
    assert any("dfn5b" in line and "squash" in line for line in lines)
    assert main(["models", "--pretrained", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(pretrained.list_pretrained()) and {r["architecture"] for r in rows} <= set(clipforge.available_models())
