"""The towers' shortcuts give the same features as the plain computation:

* the last block computes only the token the tower reads (class token / end-of-text token), in the
  model itself and so in training too;
* ``fastpath``'s fused blocks, used without autograd, add the residuals in the GEMMs and compute
  QuickGELU as one in-place SiLU (the 1.702 folded into the GEMMs);
* (pieces of the batch on concurrent streams: tests/test_pieces.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import clipforge
from clipforge.fastpath.blocks import FusedResidualAttentionBlock, fuse_blocks
from clipforge.model.layers import ResidualAttentionBlock, Transformer


def _full_then_take(transformer: Transformer, x: torch.Tensor, index) -> torch.Tensor:
    out = transformer(x)  # every position through every block
    rows = torch.arange(x.shape[0])
    return out[:, index] if isinstance(index, int) else out[rows, index]


@pytest.mark.parametrize("causal", [False, True])
def test_last_block_for_one_position_equals_the_full_blocks(causal):
    torch.manual_seed(0)
    transformer = Transformer(width=32, layers=3, heads=4, causal=causal).double()
    x = torch.randn(5, 9, 32, dtype=torch.float64)
    for index in (0, 4, torch.tensor([8, 0, 3, 5, 1])):
        pooled = transformer(x, index=index)
        assert pooled.shape == (5, 32)
        torch.testing.assert_close(pooled, _full_then_take(transformer, x, index), rtol=0, atol=1e-12)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("causal", [False, True])
def test_blocks_without_autograd_equal_the_autograd_blocks(causal, act):
    """No autograd: residuals added by the projections' GEMMs, QuickGELU as SiLU; same outputs."""
    torch.manual_seed(0)
    transformer = Transformer(width=32, layers=2, heads=4, act=act, causal=causal).double()
    with torch.no_grad():
        for p in transformer.parameters():  # every bias non-zero (out_proj's starts at zero)
            p.add_(0.1 * torch.randn_like(p))
    assert fuse_blocks(transformer) == 2
    assert all(type(b) is FusedResidualAttentionBlock for b in transformer.resblocks)
    x = torch.randn(5, 9, 32, dtype=torch.float64)
    for index in (None, 0, torch.tensor([8, 0, 3, 5, 1])):
        recorded = transformer(x, index=index)  # parameters require grad: the autograd path
        assert recorded.requires_grad
        with torch.no_grad():
            plain = [ResidualAttentionBlock.forward(b, x) for b in transformer.resblocks]  # the model's own forward
            torch.testing.assert_close(transformer.resblocks[0](x), plain[0], rtol=0, atol=1e-12)
            torch.testing.assert_close(transformer(x, index=index), recorded.detach(), rtol=0, atol=1e-12)
        with torch.inference_mode():
            torch.testing.assert_close(transformer(x, index=index), recorded.detach(), rtol=0, atol=1e-12)
    transformer, x = transformer.float(), x.float()
    with torch.no_grad():
        full = transformer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast keeps the plain path (mixed dtypes)
            low = transformer(x)
    torch.testing.assert_close(low.float(), full, rtol=0.05, atol=0.05)


def test_causal_readout_ignores_positions_after_the_index():
    torch.manual_seed(0)
    transformer = Transformer(width=16, layers=2, heads=2, causal=True).double()
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    index = torch.tensor([2, 6, 4])
    changed = x.clone()
    changed[0, 3:], changed[2, 5:] = 100.0, -100.0  # after rows 0 and 2's read positions
    torch.testing.assert_close(transformer(changed, index=index), transformer(x, index=index), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_training_gradients_equal_those_of_the_full_last_block(name):
    """The shortcut is also taken in training: loss and every parameter gradient are unchanged."""
    torch.manual_seed(0)
    model = clipforge.create_model(name, text={"vocab_size": 500}).double().eval()
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, model.image_size, model.image_size, generator=gen, dtype=torch.float64)
    tokens = torch.randint(1, 498, (4, 10), generator=gen)
    tokens[:, 0] = 498
    tokens[torch.arange(4), torch.tensor([9, 3, 6, 2])] = 499  # EOT at different positions, zeros after
    for row, eot in enumerate([9, 3, 6, 2]):
        tokens[row, eot + 1:] = 0

    def loss_of(image_features, text_features):
        logits = model.logit_scale.exp() * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).t()
        return F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.t(), torch.arange(4))

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fast = grads(loss_of(model.encode_image(images), model.encode_text(tokens)))
    text = model.token_embedding(tokens) + model.positional_embedding[: tokens.shape[1]]
    text = _full_then_take(model.transformer, text, tokens.argmax(-1))
    reference_text = model.ln_final(text) @ model.text_projection
    if name == "tiny-vit":
        v = model.visual
        x = v.conv1(images).flatten(2).transpose(1, 2)
        x = torch.cat([v.class_embedding.expand(4, 1, -1), x], dim=1) + v.positional_embedding
        reference_image = v.ln_post(_full_then_take(v.transformer, v.ln_pre(x), 0)) @ v.proj
    else:
        reference_image = model.encode_image(images)  # the ResNet has no transformer
    slow = grads(loss_of(reference_image, reference_text))
    assert fast.keys() == slow.keys()
    for key in fast:
        torch.testing.assert_close(fast[key], slow[key], rtol=0, atol=1e-11, msg=key)


def test_frozen_weights_take_the_fused_path_with_grad_mode_on():
    """Weights that need no gradient (``optimize_for_inference`` freezes them) are a no-autograd forward."""
    torch.manual_seed(0)
    block = ResidualAttentionBlock(24, 2).double()
    x = torch.randn(3, 5, 24, dtype=torch.float64)
    reference = block(x).detach()
    fuse_blocks(block)
    block.requires_grad_(False)
    out = block(x)  # grad mode on, nothing to record
    assert not out.requires_grad
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-12)


@pytest.mark.slow
def test_compiled_inference_keeps_keys_and_features():
    """``optimize_for_inference(compile=True)`` compiles the per-piece forwards; pieces stay outside."""
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit", text={"vocab_size": 500}).eval()
    images = torch.randn(6, 3, model.image_size, model.image_size)
    tokens = torch.randint(1, 499, (6, 10))
    tokens[:, 0], tokens[:, -1] = 498, 499
    rows = 4 * ((model.image_size // model.visual.patch_size) ** 2 + 1)  # 4 images per piece: 3 + 3
    fast = clipforge.optimize_for_inference(model, clipforge.InferenceOptions(compile=True, chunk_rows=rows))
    assert fast.visual._clipforge_pieces.streams == 1 and fast._clipforge_pieces.streams == 1  # the compiled threads
    assert list(fast.state_dict()) == list(model.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(fast.encode_image(images), model.encode_image(images), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast.encode_text(tokens), model.encode_text(tokens), rtol=1e-5, atol=1e-5)
