"""Conversion to and from HF transformers' CLIPModel: equal outputs within 1e-5 both ways (random HF
models built offline from a CLIPConfig), and the reference tiny ViT round-tripped through HF."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import clipforge
from clipforge.checkpoint import CheckpointError
from clipforge.hf import config_from_hf, from_hf, hf_config_dict, state_from_hf, state_to_hf, to_hf

transformers = pytest.importorskip("transformers")  # the `hf` extra
TOL = 1e-5


def _features(out) -> torch.Tensor:
    """transformers 5 returns a model output from get_*_features; 4.x returned the tensor."""
    return out if torch.is_tensor(out) else out.pooler_output


def _random_hf(act: str, seed: int = 0):
    torch.manual_seed(seed)
    text = dict(vocab_size=1000, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=24, hidden_act=act, eos_token_id=999, bos_token_id=998, pad_token_id=0)
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8, hidden_act=act)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=48)
    hf = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # move every weight off its init (LayerNorms start at exactly 1 and 0)
        for param in hf.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return hf


def _inputs(image_size: int, vocab: int, context: int):
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(3, 3, image_size, image_size, generator=gen)
    tokens = torch.zeros(4, context, dtype=torch.long)
    for row, length in enumerate((1, 5, context - 2, 9)):  # padding after EOT; one text fills the context
        tokens[row, 0] = vocab - 2
        tokens[row, 1: length + 1] = torch.randint(1, vocab - 2, (length,), generator=gen)
        tokens[row, length + 1] = vocab - 1
    return images, tokens


def _assert_equal_outputs(ours, hf, images, tokens):
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), _features(hf.get_image_features(pixel_values=images)),
                                   atol=TOL, rtol=0)
        torch.testing.assert_close(ours.encode_text(tokens), _features(hf.get_text_features(input_ids=tokens)),
                                   atol=TOL, rtol=0)
        hf_out = hf(input_ids=tokens, pixel_values=images)
        torch.testing.assert_close(ours.logits(images, tokens)[0], hf_out.logits_per_image, atol=TOL * 100, rtol=TOL)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_from_hf_gives_hf_outputs(act):
    hf = _random_hf(act)
    ours = from_hf(hf)
    assert ours.config.text.act == ours.config.vision.act == act
    assert ours.config.vision.num_heads == 4 and ours.config.text.num_heads == 2
    images, tokens = _inputs(32, 1000, 24)
    _assert_equal_outputs(ours, hf, images, tokens)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_to_hf_gives_our_outputs(act):
    torch.manual_seed(1)
    ours = clipforge.create_model("tiny-vit", text={"act": act, "vocab_size": 1000, "context_length": 24},
                                  vision={"act": act})
    hf = to_hf(ours)
    assert hf.config.text_config.hidden_act == hf.config.vision_config.hidden_act == act
    assert hf.config.text_config.layer_norm_eps == hf.config.vision_config.layer_norm_eps == 1e-5
    assert hf.config.text_config.eos_token_id == 999
    images, tokens = _inputs(32, 1000, 24)
    _assert_equal_outputs(ours, hf, images, tokens)
    back = from_hf(hf)
    assert back.config == ours.config
    for key, value in ours.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_reference_tiny_vit_round_trips_through_hf(reference_dir, tmp_path):
    io = load_file(str(reference_dir / "parity" / "tiny_vit_io.safetensors"))
    model = clipforge.api.load_model(reference_dir / "parity" / "tiny_vit.safetensors")
    hf = to_hf(model)
    hf.save_pretrained(tmp_path / "hf")
    with torch.no_grad():  # HF itself gives the reference outputs
        torch.testing.assert_close(_features(hf.get_image_features(pixel_values=io["images"])), io["image_features"],
                                   atol=TOL, rtol=0)
        torch.testing.assert_close(_features(hf.get_text_features(input_ids=io["tokens"])), io["text_features"],
                                   atol=TOL, rtol=0)
    for back in (from_hf(hf), clipforge.api.load_model(tmp_path / "hf")):  # live model; save_pretrained dir
        assert back.config == model.config
        with torch.no_grad():
            torch.testing.assert_close(back.encode_image(io["images"]), io["image_features"], atol=TOL, rtol=0)
            torch.testing.assert_close(back.encode_text(io["tokens"]), io["text_features"], atol=TOL, rtol=0)
            torch.testing.assert_close(back.logits(io["images"], io["tokens"])[0], io["logits_per_image"],
                                       atol=TOL * 100, rtol=TOL)


def test_state_mapping_splits_and_transposes():
    model = clipforge.create_model("tiny-vit")
    state = model.state_dict()
    hf_state = state_to_hf(state)
    w = state["transformer.resblocks.1.attn.in_proj_weight"]  # [3W, W] = [q; k; v]
    assert torch.equal(hf_state["text_model.encoder.layers.1.self_attn.k_proj.weight"], w[128:256])
    assert torch.equal(hf_state["visual_projection.weight"], state["visual.proj"].t())
    assert "vision_model.pre_layrnorm.weight" in hf_state
    assert state_from_hf(hf_state).keys() == state.keys()


def test_resnets_do_not_convert_to_hf():
    model = clipforge.create_model("tiny-rn")
    with pytest.raises(ValueError, match="no ModifiedResNet"):
        to_hf(model)
    with pytest.raises(ValueError, match="no ModifiedResNet"):
        hf_config_dict(model.config)


def test_unsupported_hf_configs_are_refused():
    base = transformers.CLIPConfig().to_dict()
    assert config_from_hf(base) == clipforge.registry.get_config("ViT-B/32").replace(
        init_logit_scale=base["logit_scale_init_value"])
    for part, key, value, match in [("text_config", "hidden_act", "relu", "hidden_act"),
                                    ("vision_config", "layer_norm_eps", 1e-6, "layer_norm_eps"),
                                    ("text_config", "eos_token_id", 5, "eos_token_id")]:
        bad = {**base, part: {**base[part], key: value}}
        with pytest.raises(ValueError, match=match):
            config_from_hf(bad)


def test_hf_directory_with_bad_config_names_the_file(tmp_path):
    hf = _random_hf("quick_gelu")
    hf.save_pretrained(tmp_path)
    config = (tmp_path / "config.json").read_text().replace('"quick_gelu"', '"relu"')
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match=r"config\.json: invalid model config .*hidden_act"):
        clipforge.api.load_model(tmp_path)


def test_convert_command_round_trip(reference_dir, tmp_path, capsys):
    """`clipforge convert`: reference → HF dir → our dir → OpenAI-layout safetensors, outputs unchanged."""
    from clipforge.cli import main

    io = load_file(str(reference_dir / "parity" / "tiny_vit_io.safetensors"))
    src = reference_dir / "parity" / "tiny_vit.safetensors"
    assert main(["convert", str(src), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert transformers.CLIPModel.from_pretrained(tmp_path / "hf").config.projection_dim == 64
    assert main(["convert", str(tmp_path / "hf"), "--to", "clipforge", "--out", str(tmp_path / "ours")]) == 0
    assert main(["convert", str(tmp_path / "ours"), "--to", "openai", "--out", str(tmp_path / "sd.safetensors")]) == 0
    model = clipforge.api.load_model(tmp_path / "sd.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(io["images"]), io["image_features"], atol=TOL, rtol=0)
        torch.testing.assert_close(model.encode_text(io["tokens"]), io["text_features"], atol=TOL, rtol=0)
    capsys.readouterr()
    resnet = reference_dir / "parity" / "tiny_resnet.safetensors"
    assert main(["convert", str(resnet), "--to", "hf", "--out", str(tmp_path / "rn_hf")]) == 1
    assert "no ModifiedResNet" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.pt"), "--to", "openai", "--out", str(tmp_path / "x")]) == 1
    assert "missing.pt" in capsys.readouterr().err


def test_sharded_hf_directory_loads(tmp_path):
    hf = _random_hf("gelu", seed=4)
    hf.save_pretrained(tmp_path, max_shard_size="300KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = clipforge.api.load_model(tmp_path)
    assert ours.config.text.act == "gelu"
    images, tokens = _inputs(32, 1000, 24)
    _assert_equal_outputs(ours, hf, images, tokens)
