"""SigLIP and SigLIP 2 against transformers' ``SiglipModel`` / ``Siglip2Model`` (random weights).

For every registered SigLIP config: every tensor maps to the HF model's (keys and shapes, on the meta
device, and the parameter count); at reduced width and depth (the same image size, patch, context and
head count) our features equal HF's within 1e-5 relative, converting both ways. The preprocessing equals
transformers' SiglipImageProcessor on the shared reference images; zero-shot probabilities are sigmoids.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import clipforge
from clipforge import hf_siglip
from clipforge.families.siglip import default_heads, mlp_ratio
from clipforge.hf import config_from_hf, from_hf, to_hf
from clipforge.model import CLIP
from clipforge.registry import available_models, get_config
from clipforge.transforms import preprocess_for

transformers = pytest.importorskip("transformers")
SIGLIP = [n for n in available_models() if get_config(n).vision.kind == "siglip"]
RELEASED = [n for n in SIGLIP if "SigLIP" in n]
REL = 1e-5
IMAGES = ["gray.png", "palette.png", "rgb_tall.jpg", "rgb_wide.png", "rgba.png", "small.jpg"]


def _hf_meta(config, naflex=False):
    classes = ((transformers.Siglip2Config, transformers.Siglip2Model) if naflex
               else (transformers.SiglipConfig, transformers.SiglipModel))
    with torch.device("meta"):
        return classes[1](classes[0](**hf_siglip.hf_config_dict(config, naflex)))


def test_the_released_sizes_are_registered():
    assert len(RELEASED) == 21 and {"ViT-B-16-SigLIP", "ViT-SO400M-14-SigLIP-384", "ViT-L-16-SigLIP2-512"} <= set(RELEASED)
    base, so400m = get_config("ViT-B-16-SigLIP"), get_config("ViT-SO400M-14-SigLIP")
    assert (base.vision.width, base.vision.layers, base.vision.num_heads, base.text.vocab_size) == (768, 12, 12, 32000)
    assert (so400m.vision.num_heads, so400m.text.num_heads, so400m.text.context_length) == (16, 16, 16)
    assert get_config("ViT-B-16-SigLIP2").text.vocab_size == 256000
    assert all(get_config(n).preprocess.mean == (0.5, 0.5, 0.5) and get_config(n).preprocess.resize == "squash"
               for n in SIGLIP)


@pytest.mark.parametrize("name", RELEASED)
def test_every_tensor_maps_to_siglip_model(name):
    config = get_config(name)
    with torch.device("meta"):
        ours = CLIP(config)
    hf = _hf_meta(config)
    mapped = {k: tuple(v.shape) for k, v in hf_siglip.state_to_hf(ours.state_dict()).items()}
    assert mapped == {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters())
    assert config_from_hf(hf.config.to_dict()) == config


def _reduced(name: str):
    """The config at width 8 per head (same heads, image size, patch, context), 1 layer, 1000 tokens."""
    config = get_config(name)
    heads = config.vision.num_heads
    assert config.text.num_heads == heads
    width = 8 * heads
    ratio = mlp_ratio(width, int(width * config.vision.mlp_ratio))  # as an HF config gives it back
    return config.replace(  # heads in the form an HF config gives back: None where the default rule agrees
        embed_dim=width, vision={"width": width, "layers": 1, "mlp_ratio": ratio,
                                 "heads": None if heads == default_heads(width) else heads},
        text={"width": width, "layers": 1, "vocab_size": 1000, "mlp_ratio": ratio,
              "heads": None if heads == max(1, width // 64) else heads})


def _perturbed(model: torch.nn.Module, seed: int):
    torch.manual_seed(seed)
    with torch.no_grad():  # off their init: LayerNorms start at exactly 1 and 0, HF's scale and bias at 0
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def _inputs(config, batch=1):
    g = torch.Generator().manual_seed(3)
    size, text = config.vision.image_size, config.text
    return (torch.randn(batch, 3, size, size, generator=g),
            torch.randint(0, text.vocab_size, (batch + 1, text.context_length), generator=g))


def _close(ours: torch.Tensor, theirs) -> None:
    theirs = theirs if torch.is_tensor(theirs) else theirs.pooler_output
    assert ours.shape == theirs.shape
    assert float((ours - theirs).abs().max() / theirs.abs().max()) <= REL


@pytest.mark.parametrize("name", SIGLIP)
def test_features_equal_siglip_model_both_ways(name):
    config = _reduced(name)
    images, tokens = _inputs(config)
    ours = _perturbed(clipforge.create_model(config), 0)
    hf = to_hf(ours)
    with torch.no_grad():
        _close(ours.encode_image(images), hf.get_image_features(pixel_values=images))
        _close(ours.encode_text(tokens), hf.get_text_features(input_ids=tokens))
        out = hf(input_ids=tokens, pixel_values=images)
        torch.testing.assert_close(ours.logits(images, tokens)[0], out.logits_per_image, atol=1e-4, rtol=1e-5)
    back = from_hf(_perturbed(hf, 1))  # and from HF's side: another random model
    assert back.config == config
    with torch.no_grad():
        _close(back.encode_image(images), hf.get_image_features(pixel_values=images))
        _close(back.encode_text(tokens), hf.get_text_features(input_ids=tokens))


def _patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Siglip2ImageProcessor's layout: [N, 3, H, W] → [N, patches, p·p·3], patches row by row, (row, column, channel)."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(n, (h // patch) * (w // patch), patch * patch * c)


@pytest.mark.parametrize("name", ["ViT-B-16-SigLIP2-256", "ViT-SO400M-16-SigLIP2-256"])
def test_naflex_siglip2_model_at_its_native_grid(name):
    """Siglip2Model (NaFlex): a Linear patch embedding and positions resized per image; square images at
    sqrt(num_patches) patches a side with a full mask use the stored positions as they are."""
    config = _reduced(name)
    assert hf_siglip.hf_config_dict(config, naflex=True)["vision_config"]["num_patches"] == 256
    ours = _perturbed(clipforge.create_model(config), 0)
    hf = hf_siglip.to_hf(ours, naflex=True)
    assert isinstance(hf, transformers.Siglip2Model)
    images, tokens = _inputs(config)
    grid, patch = config.vision.image_size // config.vision.patch_size, config.vision.patch_size
    n = images.shape[0]
    kwargs = dict(pixel_values=_patches(images, patch), pixel_attention_mask=torch.ones(n, grid * grid, dtype=torch.long),
                  spatial_shapes=torch.tensor([[grid, grid]] * n))
    with torch.no_grad():
        _close(ours.encode_image(images), hf.get_image_features(**kwargs))
        _close(ours.encode_text(tokens), hf.get_text_features(input_ids=tokens))
    back = from_hf(hf)
    assert back.config == config
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], value, atol=0, rtol=0, msg=key)


def test_hf_config_we_cannot_compute_is_refused():
    good = transformers.SiglipConfig().to_dict()
    assert config_from_hf(good) == get_config("ViT-B-16-SigLIP")  # transformers' defaults are SigLIP B/16
    for part, change, message in (("text_config", {"hidden_act": "relu"}, "hidden_act"),
                                  ("vision_config", {"layer_norm_eps": 1e-5}, "layer_norm_eps"),
                                  ("vision_config", {"vision_use_head": False}, "vision_use_head"),
                                  ("text_config", {"projection_size": 512}, "projection_size")):
        bad = {**good, part: {**good[part], **change}}
        with pytest.raises(ValueError, match=message):
            config_from_hf(bad)


@pytest.mark.parametrize("name", IMAGES)
def test_preprocessing_equals_siglip_image_processor(reference_dir, name):
    processor = transformers.SiglipImageProcessorPil()  # resize to 224², bicubic, RGB first, mean/std 0.5
    ours = preprocess_for(get_config("ViT-B-16-SigLIP"))
    with Image.open(reference_dir / "preprocess" / name) as image:
        expected = processor(images=image, return_tensors="pt").pixel_values[0]
        torch.testing.assert_close(ours(image), expected, atol=1e-6, rtol=0)


def test_probabilities_are_sigmoids_with_the_bias():
    model = clipforge.create_model("tiny-siglip")
    cosine = torch.tensor([[0.9, 0.2, -0.1]])
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
        model.logit_bias.fill_(-5.0)
        expected = torch.sigmoid(torch.exp(torch.tensor(2.0)) * cosine - 5.0)
        torch.testing.assert_close(model.probabilities(cosine), expected)
    assert float(model.probabilities(cosine).sum()) != pytest.approx(1.0)  # independent per pair, not a softmax
    clip = clipforge.create_model("tiny-vit")
    torch.testing.assert_close(clip.probabilities(cosine).sum(), torch.tensor(1.0))
