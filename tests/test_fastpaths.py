"""The fast paths (clipforge.fastpath) give the same results as the plain model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipforge import create_model
from clipforge.fastpath import (
    InferenceOptions,
    channels_last,
    fold_batchnorm,
    optimize_for_inference,
    trim_tokens,
    trimmed_length,
)

VOCAB = 2048  # the demo configs' vocabulary: SOT = 2046, EOT = 2047 (the largest id)


def caption_tokens(lengths: list[int], context: int = 32, seed: int = 0) -> torch.Tensor:
    """Rows of SOT + (n-2) random ids + EOT, zero-padded: [len(lengths), context]."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(len(lengths), context, dtype=torch.long)
    for i, n in enumerate(lengths):
        tokens[i, 0] = VOCAB - 2
        tokens[i, 1: n - 1] = torch.randint(1, VOCAB - 2, (n - 2,), generator=gen)
        tokens[i, n - 1] = VOCAB - 1
    return tokens


def test_trimmed_length_keeps_every_eot_and_rounds_up():
    tokens = caption_tokens([5, 11, 9])
    assert trimmed_length(tokens, multiple=1) == 11
    assert trimmed_length(tokens, multiple=8) == 16
    assert trimmed_length(caption_tokens([30]), multiple=8) == 32  # capped at the context
    trimmed = trim_tokens(tokens)
    assert trimmed.shape == (3, 16)
    assert torch.equal(trimmed.argmax(dim=1), tokens.argmax(dim=1))  # every EOT kept in place
    assert trimmed.data_ptr() == tokens.data_ptr()  # a view: no copy on the host


def test_trim_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[N, L\].*\(32,\)"):
        trim_tokens(torch.zeros(32, dtype=torch.long))
    with pytest.raises(ValueError, match="multiple"):
        trim_tokens(caption_tokens([4]), multiple=0)
    assert trim_tokens(torch.zeros(0, 32, dtype=torch.long)).shape == (0, 32)


@pytest.mark.parametrize("name", ["demo-rn", "tiny-vit"])
def test_trimmed_tokens_give_the_same_text_features(name):
    torch.manual_seed(0)
    model = create_model(name, text={"vocab_size": VOCAB, "context_length": 32})
    tokens = caption_tokens([3, 17, 9, 12, 25])
    with torch.no_grad():
        full = model.encode_text(tokens)
        for multiple in (1, 8):
            trimmed = model.encode_text(trim_tokens(tokens, multiple))
            torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-6)


def test_positions_after_eot_cannot_change_the_features():
    """The property trimming relies on (causal mask + EOT read-out), and that the check can fail."""
    torch.manual_seed(0)
    model = create_model("demo-vit")
    tokens = caption_tokens([6, 10])
    changed_after = tokens.clone()
    changed_after[:, 12:] = torch.randint(1, VOCAB - 2, (2, 20))  # garbage after every EOT
    changed_before = tokens.clone()
    changed_before[:, 2] = (changed_before[:, 2] % 100) + 1  # a real token changed
    with torch.no_grad():
        base = model.encode_text(tokens)
        torch.testing.assert_close(model.encode_text(changed_after), base, rtol=1e-5, atol=1e-6)
        assert (model.encode_text(changed_before) - base).abs().max() > 1e-3


def test_trimmed_training_step_matches_the_full_one():
    """One AdamW step on trimmed tokens moves every parameter as the full-length step does."""
    torch.manual_seed(0)
    reference = create_model("demo-vit").train()
    trimmed_model = create_model("demo-vit").train()
    trimmed_model.load_state_dict(reference.state_dict())
    images = torch.randn(4, 3, 64, 64)
    tokens = caption_tokens([5, 9, 14, 7])
    for model, toks in ((reference, tokens), (trimmed_model, trim_tokens(tokens))):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.2)
        image_features, text_features, scale = model(images, toks)
        logits = scale * image_features @ text_features.t()
        labels = torch.arange(4)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        loss.backward()
        optimizer.step()
    for (name, a), b in zip(reference.named_parameters(), trimmed_model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def _resnet_with_statistics() -> torch.nn.Module:
    """demo-rn in eval mode whose BatchNorms hold non-trivial statistics and gains."""
    torch.manual_seed(0)
    model = create_model("demo-rn").train()
    with torch.no_grad():
        model.encode_image(torch.randn(4, 3, 64, 64) * 2 + 0.5)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def test_fold_batchnorm_gives_the_same_image_features():
    model = _resnet_with_statistics()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = model.encode_image(images)
        fast = optimize_for_inference(model, InferenceOptions(fold_batchnorm=True, channels_last=True))
        torch.testing.assert_close(fast.encode_image(images), expected, rtol=1e-4, atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    with pytest.raises(ValueError, match="eval-mode"):
        fold_batchnorm(create_model("demo-rn").train())


@pytest.mark.slow
def test_channels_last_training_matches():
    torch.manual_seed(0)
    plain = create_model("demo-rn").train()
    fast = create_model("demo-rn").train()
    fast.load_state_dict(plain.state_dict())
    channels_last(fast)
    assert fast.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 64, 64)
    for model in (plain, fast):
        model.encode_image(images).square().sum().backward()
    for name in ("conv1.weight", "layer4.0.conv2.weight", "attnpool.c_proj.weight"):
        a = fast.visual.get_parameter(name).grad
        b = plain.visual.get_parameter(name).grad
        # Summation order differs between layouts: compare against the gradient's own scale.
        assert (a - b).abs().max() <= 1e-4 * b.abs().max(), name
