"""Registry-wide checks: every released architecture matches OpenAI's checkpoints key for key, every
name resolves with the right activation, every registered model trains (forward + backward) at
reduced size, and the small configs at full size. open_clip's zoo: tests/test_openclip_parity.py."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import clipforge
from clipforge.model import CLIP, QuickGELU
from clipforge.registry import OPENAI_MODELS, canonical_name, describe, get_config
from reduced import reduced

OPENAI_ORDER = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"]
# The reference JSON uses open_clip's dashed names; with "-quickgelu" they are our aliases of OpenAI's models.
REFERENCE_NAMES = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"]
SMALL = ["tiny-vit", "tiny-rn", "demo-rn", "demo-rn16", "demo-vit"]


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


def _expected_act(name: str) -> str:
    """open_clip's naming: a dashed ViT name is GELU unless it ends in -quickgelu; OpenAI's names and
    the ResNets (open_clip's names coincide with OpenAI's there) are QuickGELU, as are the small
    configs; every released SigLIP uses GELU's tanh approximation."""
    if get_config(name).vision.kind == "siglip":
        return "gelu_tanh"
    dashed_vit = name.startswith("ViT-") and "/" not in name
    return "gelu" if dashed_vit and not name.endswith("-quickgelu") else "quick_gelu"


def _act_name(module: nn.Module) -> str:
    return "quick_gelu" if isinstance(module, QuickGELU) else "gelu" if module.approximate == "none" else "gelu_tanh"


@pytest.mark.parametrize("name", clipforge.available_models(aliases=True))
def test_every_name_resolves_with_its_activation(name):
    config = get_config(name)
    assert describe(name)
    model = _meta_model(name)
    acts = {_act_name(m) for m in model.modules() if isinstance(m, (QuickGELU, nn.GELU))}
    assert acts == {_expected_act(name)}, f"{name}: activations {acts}"
    assert config.text.act == config.vision.act == _expected_act(name)


def test_gelu_names_have_the_quickgelu_shapes():
    for dashed, openai in [("ViT-B-32", "ViT-B/32"), ("ViT-L-14-336", "ViT-L/14@336px")]:
        gelu, quick = get_config(dashed), get_config(openai)
        assert gelu.replace(vision={"act": "quick_gelu"}, text={"act": "quick_gelu"}) == quick
        assert get_config(f"{dashed}-quickgelu") == quick


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(KeyError, match="unknown model 'ViT-Q/99'.*RN50"):
        get_config("ViT-Q/99")


def _check_forward_backward(model: CLIP, device: str = "cpu") -> None:
    """One contrastive step; every parameter gets a gradient of its own shape (finite, on a real device)."""
    config = model.config
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, config.vision.image_size, config.vision.image_size, generator=gen).to(device)
    tokens = torch.randint(1, config.text.vocab_size - 1, (2, 12), generator=gen)
    tokens[:, -1] = config.text.vocab_size - 1  # end-of-text, the largest id
    image_features, text_features, scale = model(images, tokens.to(device))
    assert image_features.shape == text_features.shape == (2, config.embed_dim)
    logits = scale * image_features @ text_features.t()
    if getattr(model, "logit_bias", None) is not None:  # SigLIP models carry their bias
        logits = logits + model.logit_bias
    labels = torch.arange(2, device=device)
    loss = (nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.t(), labels)) / 2
    loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and param.grad.shape == param.shape, f"no gradient for {pname}"
        assert device == "meta" or torch.isfinite(param.grad).all(), f"non-finite gradient for {pname}"
    assert device == "meta" or model.logit_scale.grad.abs() > 0


@pytest.mark.parametrize("name", SMALL)
def test_small_config_forward_backward_on_cpu(name):
    torch.manual_seed(0)
    _check_forward_backward(clipforge.create_model(name).train())


@pytest.mark.parametrize("name", clipforge.available_models())
def test_every_registered_model_trains_at_reduced_size(name, one_thread):
    """Same options (heads, patch size, MLP ratio, activation, block structure), tiny widths; a family
    with no reduction rule in tests/reduced.py trains at full size on the meta device instead."""
    config = reduced(get_config(name))
    torch.manual_seed(0)
    if config is None:
        with torch.device("meta"):
            model = CLIP(get_config(name)).train()
        _check_forward_backward(model, "meta")
        return
    model = clipforge.create_model(config).train()
    acts = {_act_name(m) for m in model.modules() if isinstance(m, (QuickGELU, nn.GELU))}
    assert acts == {_expected_act(name)}
    _check_forward_backward(model)


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
