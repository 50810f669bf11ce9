"""The open ViT zoo against open_clip 3.3 (fixtures written by tests/fixtures/make_openclip_fixtures.py):
parameter counts, head counts, activations and every state_dict key and shape at full size, and
encode_image / encode_text of reduced-size copies within 1e-5 relative, read through open_clip's own
config file (``open_clip_config.json``, as its ``save_config_for_hf`` writes it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from clipforge.checkpoint import infer_config
from clipforge.config import PreprocessConfig
from clipforge.model import CLIP, QuickGELU
from clipforge.openclip_format import config_from_openclip
from clipforge.registry import available_models, get_config
from reduced import reduced

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "openclip"
ARCHITECTURES = json.loads((FIXTURES / "architectures.json").read_text())["models"]
VARIANTS = sorted(FIXTURES.glob("reduced/*.safetensors"))


def _meta_model(name: str) -> CLIP:
    with torch.device("meta"):
        return CLIP(get_config(name))


def test_every_registered_open_clip_vit_name_has_a_fixture():
    # (SigLIP's open_clip names are checked against transformers' SiglipModel: tests/test_siglip.py)
    ours = {n for n in available_models(aliases=True)
            if n.startswith("ViT-") and "/" not in n and get_config(n).vision.kind == "vit"}
    assert ours <= set(ARCHITECTURES), sorted(ours - set(ARCHITECTURES))
    assert {"ViT-B-32-256", "ViT-B-16-plus-240", "ViT-H-14-378-quickgelu", "ViT-g-14", "ViT-bigG-14"} <= ours


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_full_size_architecture_matches_open_clip(name):
    expected = ARCHITECTURES[name]
    model, config = _meta_model(name), get_config(name)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == expected["state_dict"]  # every key, every shape: open_clip's checkpoints load strictly
    assert model.num_parameters() == expected["parameters"]
    assert (config.vision.num_heads, config.text.num_heads) == (expected["vision_heads"], expected["text_heads"])
    act = QuickGELU if expected["quick_gelu"] else nn.GELU
    assert {type(m) for m in model.modules() if isinstance(m, (QuickGELU, nn.GELU))} == {act}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_an_open_clip_state_dict_without_its_config_gets_open_clips_heads(name):
    """Shapes alone do not give head counts: the registered architectures of those shapes supply them."""
    expected = ARCHITECTURES[name]
    state = {k: torch.empty(shape, device="meta") for k, shape in expected["state_dict"].items()}
    config = infer_config(state, act="quick_gelu" if expected["quick_gelu"] else "gelu")
    assert (config.vision.num_heads, config.text.num_heads) == (expected["vision_heads"], expected["text_heads"])
    with torch.device("meta"):
        assert {k: list(v.shape) for k, v in CLIP(config).state_dict().items()} == expected["state_dict"]


def _variant(path: Path):
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state = {k[len("state."):]: v.float() if v.is_floating_point() else v for k, v in tensors.items() if k.startswith("state.")}
    return meta, state, tensors


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


@pytest.mark.parametrize("path", VARIANTS, ids=[p.stem for p in VARIANTS])
def test_reduced_architecture_computes_what_open_clip_computes(path, one_thread):
    meta, state, tensors = _variant(path)
    parsed = config_from_openclip(json.loads(meta["open_clip_config"]))  # open_clip's own file, activation GELU
    images, tokens = tensors["images"].float(), tensors["tokens"]
    for act in json.loads(meta["acts"]):
        config = parsed.replace(vision={"act": act}, text={"act": act})
        names = [n for n in json.loads(meta["names"]) if ARCHITECTURES[n]["quick_gelu"] == (act == "quick_gelu")]
        for name in names:  # the registered config, reduced, is exactly the reduced open_clip config
            assert reduced(get_config(name)) == config.replace(preprocess=PreprocessConfig()), name
        model = CLIP(config).eval()
        model.load_state_dict(state, strict=True)
        with torch.no_grad():
            image_features, text_features = model.encode_image(images), model.encode_text(tokens)
        assert _relative_error(image_features, tensors[f"{act}.image_features"]) < 1e-5, (path.stem, act)
        assert _relative_error(text_features, tensors[f"{act}.text_features"]) < 1e-5, (path.stem, act)
