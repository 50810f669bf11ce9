"""Registry-wide checks: every released architecture matches OpenAI's checkpoints key for key, every
name resolves with the right activation, and every small config trains (forward + backward) on a CPU."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import clipforge
from clipforge.model import CLIP, QuickGELU
from clipforge.registry import OPENAI_MODELS, canonical_name, describe, get_config

OPENAI_ORDER = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"]
# The reference JSON uses open_clip's dashed names; with "-quickgelu" they are our aliases of OpenAI's models.
REFERENCE_NAMES = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"]
SMALL = ["tiny-vit", "tiny-rn", "demo-rn", "demo-rn16", "demo-vit"]
GELU_NAMES = {"ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"}


@pytest.fixture(scope="module")
def reference(reference_dir):
    return json.loads((reference_dir / "architectures" / "openai_models.json").read_text())


def _meta_model(name: str) -> CLIP:
    with torch.device("meta"):  # no memory, no init cost: shapes only
        return CLIP(get_config(name))


def test_available_models_lists_openai_names_first_in_openai_order():
    names = clipforge.available_models()
    assert names[:9] == OPENAI_ORDER
    assert list(OPENAI_MODELS) == OPENAI_ORDER
    assert set(SMALL) <= set(names)
    assert len(names) == len(set(names))
    with_aliases = clipforge.available_models(aliases=True)
    assert with_aliases[: len(names)] == names and "ViT-B-32-quickgelu" in with_aliases


@pytest.mark.parametrize("ref_name", REFERENCE_NAMES)
def test_released_architecture_matches_reference(reference, ref_name):
    name = canonical_name(ref_name if ref_name.startswith("RN") else f"{ref_name}-quickgelu")
    expected = reference[ref_name]
    model = _meta_model(name)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == expected["state_dict_shapes"]  # same keys, same shapes: strict loading works
    assert model.num_parameters() == expected["parameters"]
    assert model.config.embed_dim == expected["embed_dim"]
    assert model.image_size == expected["image_resolution"]


@pytest.mark.parametrize("ref_name", ["RN50", "ViT-B-32"])
def test_strict_load_of_a_released_shaped_state_dict(reference, ref_name):
    """A state_dict with exactly the reference shapes loads with strict=True (no missing/unexpected keys)."""
    name = canonical_name(ref_name if ref_name.startswith("RN") else f"{ref_name}-quickgelu")
    model = _meta_model(name)
    state = {k: torch.empty(shape, device="meta") for k, shape in reference[ref_name]["state_dict_shapes"].items()}
    result = model.load_state_dict(state, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys


def _expected_act(name: str) -> type[nn.Module]:
    return nn.GELU if canonical_name(name) in GELU_NAMES else QuickGELU


@pytest.mark.parametrize("name", clipforge.available_models(aliases=True))
def test_every_name_resolves_with_its_activation(name):
    config = get_config(name)
    assert describe(name)
    model = _meta_model(name)
    acts = {type(m) for m in model.modules() if isinstance(m, (QuickGELU, nn.GELU))}
    assert acts == {_expected_act(name)}, f"{name}: activations {acts}"
    assert config.text.act == config.vision.act == ("gelu" if _expected_act(name) is nn.GELU else "quick_gelu")


def test_gelu_names_have_the_quickgelu_shapes():
    for dashed, openai in [("ViT-B-32", "ViT-B/32"), ("ViT-L-14-336", "ViT-L/14@336px")]:
        gelu, quick = get_config(dashed), get_config(openai)
        assert gelu.replace(vision={"act": "quick_gelu"}, text={"act": "quick_gelu"}) == quick
        assert get_config(f"{dashed}-quickgelu") == quick


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(KeyError, match="unknown model 'ViT-Q/99'.*RN50"):
        get_config("ViT-Q/99")


@pytest.mark.parametrize("name", SMALL)
def test_small_config_forward_backward_on_cpu(name):
    torch.manual_seed(0)
    model = clipforge.create_model(name).train()
    config = model.config
    images = torch.randn(2, 3, config.vision.image_size, config.vision.image_size)
    tokens = torch.randint(1, config.text.vocab_size - 1, (2, 12))
    tokens[:, -1] = config.text.vocab_size - 1  # end-of-text, the largest id
    image_features, text_features, scale = model(images, tokens)
    assert image_features.shape == text_features.shape == (2, config.embed_dim)
    logits = scale * image_features @ text_features.t()
    loss = (nn.functional.cross_entropy(logits, torch.arange(2)) + nn.functional.cross_entropy(logits.t(), torch.arange(2))) / 2
    loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient for {pname}"
    assert model.logit_scale.grad.abs() > 0


def test_models_command_table_and_json(capsys):
    from clipforge.cli import main

    assert main(["models"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["name", "image"] and table[1].startswith("RN50 ")
    assert any(line.startswith("ViT-B/32 ") and "151.3M" in line and "ViT-B-32-quickgelu" in line for line in table)
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == clipforge.available_models()
    rn50 = rows[0]
    assert rn50["parameters"] == 102_007_137 and rn50["embed_dim"] == 1024 and rn50["image_size"] == 224
    assert rn50["tower"].startswith("ModifiedResNet") and rn50["aliases"] == ["RN50-quickgelu"]
