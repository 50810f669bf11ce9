"""Model behaviour: activation checkpointing, bf16 autocast, EOT readout, QuickGELU, patch dropout,
positional-embedding interpolation at load, OpenAI's initialisation, input errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import clipforge
from clipforge.api import load_model
from clipforge.model import QuickGELU


def _inputs(model, n=3, length=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    size, vocab = model.image_size, model.config.text.vocab_size
    images = torch.randn(n, 3, size, size, generator=gen)
    tokens = torch.randint(1, vocab - 2, (n, length), generator=gen)
    tokens[:, 0], tokens[:, -1] = vocab - 2, vocab - 1
    return images, tokens


def _loss_and_grads(model, images, tokens):
    model.zero_grad()
    image_features, text_features, scale = model(images, tokens)
    loss = F.cross_entropy(scale * image_features @ text_features.t(), torch.arange(len(images)))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_grad_checkpointing_gives_same_outputs_and_grads(name):
    torch.manual_seed(0)
    model = clipforge.create_model(name, text={"vocab_size": 1000}).train()  # small vocabulary: fast
    for module in model.modules():  # BatchNorm in train mode would see the batch twice; compare like for like
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    images, tokens = _inputs(model)
    loss, grads = _loss_and_grads(model, images, tokens)
    model.set_grad_checkpointing(True)
    loss_ckpt, grads_ckpt = _loss_and_grads(model, images, tokens)
    torch.testing.assert_close(loss_ckpt, loss, atol=1e-6, rtol=0)
    for key in grads:
        torch.testing.assert_close(grads_ckpt[key], grads[key], atol=1e-6, rtol=1e-5, msg=key)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_bf16_autocast_runs_and_is_close_to_fp32(name):
    torch.manual_seed(0)
    model = clipforge.create_model(name, text={"vocab_size": 1000})
    images, tokens = _inputs(model)
    with torch.no_grad():
        ref_img, ref_txt, _ = model(images, tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            img, txt, _ = model(images, tokens)
    assert img.dtype == torch.bfloat16 and torch.isfinite(img.float()).all()
    assert F.cosine_similarity(img.float(), ref_img, dim=-1).min() > 0.99
    assert F.cosine_similarity(txt.float(), ref_txt, dim=-1).min() > 0.99


def test_encode_text_reads_out_at_the_end_of_text_token():
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit").double()  # float64: the paths agree to rounding, 1e-12
    eot = model.config.text.vocab_size - 1
    tokens = torch.zeros(2, 20, dtype=torch.long)
    tokens[:, :6] = torch.tensor([eot - 1, 320, 1125, 539, 2368, eot])
    with torch.no_grad():
        base = model.encode_text(tokens)
        padded = tokens.clone()
        padded[1, 6:] = 4000  # anything after EOT cannot matter: causal mask, readout at EOT
        torch.testing.assert_close(model.encode_text(padded), base, atol=1e-12, rtol=0)
        x = model.token_embedding(tokens) + model.positional_embedding[:20]
        manual = model.ln_final(model.transformer(x))[:, 5] @ model.text_projection  # position 5 holds EOT
        torch.testing.assert_close(base, manual, atol=1e-12, rtol=0)
        earlier = tokens.clone()
        earlier[0, 2] = 999
        assert not torch.allclose(model.encode_text(earlier)[0], base[0])


def test_quickgelu_formula_and_difference_from_gelu():
    x = torch.linspace(-6, 6, 1001)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x))
    gap = (QuickGELU()(x) - F.gelu(x)).abs().max()
    assert 0.005 < gap < 0.03  # an approximation: close, not equal


def test_gelu_and_quickgelu_models_differ_with_the_same_weights():
    torch.manual_seed(0)
    quick = clipforge.create_model("tiny-vit")
    gelu = clipforge.create_model("tiny-vit", vision={"act": "gelu"}, text={"act": "gelu"})
    gelu.load_state_dict(quick.state_dict())
    images, tokens = _inputs(quick)
    with torch.no_grad():
        assert not torch.allclose(quick.encode_image(images), gelu.encode_image(images), atol=1e-4)
        assert not torch.allclose(quick.encode_text(tokens), gelu.encode_text(tokens), atol=1e-4)


def test_patch_dropout_keeps_class_token_and_acts_only_in_training():
    torch.manual_seed(0)
    model = clipforge.create_model("demo-vit", vision={"patch_dropout": 0.5})
    plain = clipforge.create_model("demo-vit")
    plain.load_state_dict(model.state_dict())
    images, _ = _inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), plain.encode_image(images))  # eval: no dropout
        model.train()
        torch.manual_seed(1)
        first = model.encode_image(images)
        torch.manual_seed(1)
        assert torch.equal(model.encode_image(images), first)  # reproducible for a seed
        assert not torch.allclose(first, plain.encode_image(images), atol=1e-4)
    tokens = torch.arange(5 * 65 * 4, dtype=torch.float).view(5, 65, 4)  # [N, 1 + 64 patches, W], all distinct
    kept = model.visual._drop_patches(tokens)
    assert kept.shape == (5, 1 + 32, 4)
    assert torch.equal(kept[:, 0], tokens[:, 0])  # the class token stays first
    for row in range(5):
        rows = {tuple(r.tolist()) for r in tokens[row, 1:]}
        assert all(tuple(r.tolist()) in rows for r in kept[row, 1:])  # the rest are patches of the same image


@pytest.mark.parametrize("name, new_size, key", [
    ("tiny-vit", 64, "visual.positional_embedding"),
    ("tiny-rn", 96, "visual.attnpool.positional_embedding"),
])
def test_loading_at_another_image_size_interpolates_positions(tmp_path, name, new_size, key):
    torch.manual_seed(0)
    model = clipforge.create_model(name)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    stride = model.config.vision.patch_size or 32
    state[key][1:] = 0.25  # a constant grid must stay constant under bicubic resizing
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    resized, preprocess, _ = clipforge.load(path, image_size=new_size)
    assert resized.image_size == new_size and preprocess.image_size == new_size
    new = resized.state_dict()[key]
    assert new.shape == (1 + (new_size // stride) ** 2, state[key].shape[1])
    assert torch.equal(new[0], state[key][0])  # the class / mean token's embedding is kept
    torch.testing.assert_close(new[1:], torch.full_like(new[1:], 0.25), atol=1e-6, rtol=0)
    images, tokens = _inputs(resized, n=2)
    with torch.no_grad():
        features = resized.encode_image(images)
    assert features.shape == (2, model.config.embed_dim) and torch.isfinite(features).all()
    same = load_model(path)
    assert same.image_size == model.image_size


def test_openai_initialisation():
    torch.manual_seed(0)
    model = clipforge.create_model("demo-rn")
    assert math.isclose(model.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    assert abs(model.token_embedding.weight.std().item() - 0.02) < 0.002
    assert abs(model.positional_embedding.std().item() - 0.01) < 0.002
    width, layers = model.config.text.width, model.config.text.layers
    block = model.transformer.resblocks[0]
    assert abs(block.attn.in_proj_weight.std().item() - width**-0.5) < 0.1 * width**-0.5
    proj_std = width**-0.5 * (2 * layers) ** -0.5
    assert abs(block.attn.out_proj.weight.std().item() - proj_std) < 0.15 * proj_std
    for stage in (model.visual.layer1, model.visual.layer4):
        assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in stage)  # residual branches start at zero
    std = model.visual.attnpool.c_proj.in_features ** -0.5
    assert abs(model.visual.attnpool.q_proj.weight.std().item() - std) < 0.1 * std


def test_bad_inputs_give_clear_errors():
    model = clipforge.create_model("tiny-vit")
    with pytest.raises(ValueError, match=r"images must have shape \[N, 3, 32, 32\].*\[2, 3, 64, 64\]"):
        model.encode_image(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="exceed the context length 77"):
        model.encode_text(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="integer ids"):
        model.encode_text(torch.zeros(1, 5))
