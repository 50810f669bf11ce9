"""The contrastive losses against the paper's pseudo-code, their diagnostics, and row splitting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipforge.train.losses import clip_loss, siglip_loss


def _features(n: int = 8, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1)


def _paper_loss(image: np.ndarray, text: np.ndarray, t: float) -> float:
    """Figure 3 of the paper, in numpy: symmetric cross-entropy over the scaled similarity matrix."""
    logits = image @ text.T * math.exp(t)

    def cross_entropy(rows: np.ndarray) -> float:
        rows = rows - rows.max(axis=1, keepdims=True)
        log_probs = rows - np.log(np.exp(rows).sum(axis=1, keepdims=True))
        return float(-np.mean(np.diag(log_probs)))

    return (cross_entropy(logits) + cross_entropy(logits.T)) / 2


def test_clip_loss_matches_paper_pseudo_code():
    image, text = _features()
    t = math.log(1 / 0.07)
    loss, diag = clip_loss(image, text, torch.tensor(t).exp())
    assert loss.item() == pytest.approx(_paper_loss(image.double().numpy(), text.double().numpy(), t), rel=1e-5)
    assert diag["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-6)


def test_clip_loss_diagnostics_count_correct_pairs():
    image, _ = _features(6)
    text = image.clone()
    text[[0, 1]] = text[[1, 0]]  # two pairs swapped: 4 of 6 rows are right in each direction
    loss, diag = clip_loss(image, text, torch.tensor(100.0))
    assert diag["i2t_acc"].item() == pytest.approx(4 / 6)
    assert diag["t2i_acc"].item() == pytest.approx(4 / 6)
    perfect, diag = clip_loss(image, image, torch.tensor(100.0))
    assert diag["i2t_acc"].item() == 1.0 and perfect.item() < loss.item()


def test_rows_split_reproduce_the_full_loss_and_gradient():
    """Each 'rank' computes its rows against all features; the mean of the parts is the full loss."""
    image, text = _features(8)
    image.requires_grad_(), text.requires_grad_()
    scale = torch.tensor(14.0, requires_grad=True)
    full, _ = clip_loss(image, text, scale)
    full_grads = torch.autograd.grad(full, (image, text, scale))
    parts = [clip_loss(image[r * 4:(r + 1) * 4], text[r * 4:(r + 1) * 4], scale,
                       all_image_features=image, all_text_features=text, offset=r * 4)[0] for r in range(2)]
    split = sum(parts) / 2
    split_grads = torch.autograd.grad(split, (image, text, scale))
    assert split.item() == pytest.approx(full.item(), abs=1e-6)
    for a, b in zip(full_grads, split_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_siglip_loss_matches_pairwise_definition():
    image, text = _features(5)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    loss, diag = siglip_loss(image, text, scale, bias)
    logits = (scale * image @ text.t() + bias).double()
    labels = 2 * torch.eye(5, dtype=torch.double) - 1
    expected = -torch.log(torch.sigmoid(labels * logits)).sum() / 5
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(diag) == {"i2t_acc", "t2i_acc", "logit_scale", "logit_bias"}


def test_siglip_rows_split_reproduce_the_full_loss():
    image, text = _features(6)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    full, _ = siglip_loss(image, text, scale, bias)
    parts = [siglip_loss(image[r * 3:(r + 1) * 3], text[r * 3:(r + 1) * 3], scale, bias,
                         all_image_features=image, all_text_features=text, offset=r * 3)[0] for r in range(2)]
    assert (sum(parts) / 2).item() == pytest.approx(full.item(), abs=1e-6)


def test_clip_loss_rejects_mismatched_shapes():
    image, text = _features(4)
    with pytest.raises(ValueError, match="same shape"):
        clip_loss(image, text[:3], torch.tensor(1.0))
    with pytest.raises(ValueError, match="offset"):
        clip_loss(image, text, torch.tensor(1.0), all_image_features=image, all_text_features=text, offset=2)
