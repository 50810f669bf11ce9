"""The towers' inference shortcuts give the same features as the plain computation:

* the last block computes only the token the tower reads (class token / end-of-text token);
* the MLP's QuickGELU runs in place when autograd is off;
* on a CPU without autograd, a batch runs in pieces of ~``inference_chunk_rows`` token rows.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import clipforge
from clipforge.model.layers import MLP, Transformer


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


def test_in_place_quickgelu_without_autograd_is_bitwise_the_autograd_one():
    torch.manual_seed(0)
    mlp = MLP(24, 96, "quick_gelu")
    x = torch.randn(6, 5, 24)
    with_grad = mlp(x)
    assert with_grad.requires_grad
    with torch.no_grad():
        assert torch.equal(mlp(x), with_grad.detach())
    with torch.inference_mode():
        assert torch.equal(mlp(x), with_grad.detach())


def _count_pieces(module, method: str) -> list[int]:
    """Record the batch size of each call to ``module.<method>`` (the real method still runs)."""
    calls, original = [], getattr(module, method)

    def counted(x):
        calls.append(x.shape[0])
        return original(x)

    setattr(module, method, counted)
    return calls


def test_cpu_inference_runs_in_pieces_with_the_same_features():
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit", text={"vocab_size": 500}).double().eval()
    images = torch.randn(7, 3, model.image_size, model.image_size, dtype=torch.float64)
    tokens = torch.randint(1, 499, (7, 12))
    tokens[:, 0], tokens[:, -1] = 498, 499
    with torch.no_grad():
        whole_image, whole_text = model.encode_image(images), model.encode_text(tokens)
    image_tokens = (model.image_size // model.visual.patch_size) ** 2 + 1
    model.visual.inference_chunk_rows = 3 * image_tokens  # 3 images per piece: 3 + 3 + 1
    model.inference_chunk_rows = 2 * 12  # 2 captions per piece
    image_calls = _count_pieces(model.visual, "_forward")
    text_calls = _count_pieces(model, "_encode_text")
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), whole_image, rtol=0, atol=1e-12)
        torch.testing.assert_close(model.encode_text(tokens), whole_text, rtol=0, atol=1e-12)
    assert image_calls == [3, 3, 1] and text_calls == [2, 2, 2, 1]
    image_calls.clear()
    model.encode_image(images)  # autograd on (training, feature gradients): one piece
    assert image_calls == [7]


def test_resnet_pieces_and_training_mode_runs_whole():
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-rn", text={"vocab_size": 500}).double().eval()
    images = torch.randn(5, 3, model.image_size, model.image_size, dtype=torch.float64)
    with torch.no_grad():
        whole = model.encode_image(images)
    model.visual.inference_chunk_rows = 2 * (model.image_size // 4) ** 2  # 2 images per piece
    calls = _count_pieces(model.visual, "_forward")
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), whole, rtol=0, atol=1e-12)
        assert calls == [2, 2, 1]
        calls.clear()
        model.train()  # BatchNorm uses batch statistics: pieces would change them
        model.encode_image(images)
    assert calls == [5]


def test_compiled_inference_keeps_keys_and_features():
    """``optimize_for_inference(compile=True)`` compiles the per-piece forwards; pieces stay outside."""
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit", text={"vocab_size": 500}).eval()
    images = torch.randn(6, 3, model.image_size, model.image_size)
    tokens = torch.randint(1, 499, (6, 10))
    tokens[:, 0], tokens[:, -1] = 498, 499
    fast = clipforge.optimize_for_inference(model, clipforge.InferenceOptions(compile=True))
    fast.visual.inference_chunk_rows = 4 * ((model.image_size // model.visual.patch_size) ** 2 + 1)  # 4 + 2
    assert list(fast.state_dict()) == list(model.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(fast.encode_image(images), model.encode_image(images), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast.encode_text(tokens), model.encode_text(tokens), rtol=1e-5, atol=1e-5)
