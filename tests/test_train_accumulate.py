"""Exact gradient accumulation (GradCache): k micro-batches give the gradients of one batch of k·B."""

from __future__ import annotations

import copy

import pytest
import torch

from clipforge.factory import create_model
from clipforge.train.accumulate import StepContext, forward_backward
from clipforge.train.losses import LossConfig, build_loss
from clipforge.train.objective import TrainModel

CPU = StepContext(torch.device("cpu"), trim_tokens=True)

SMALL_TEXT = {"vocab_size": 500, "context_length": 12}


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(name: str, loss: str = "clip", **vision) -> TrainModel:
    torch.manual_seed(0)
    changes = {"text": SMALL_TEXT, **({"vision": vision} if vision else {})}
    # float64: the comparison then tests the algorithm, not float32 summation order
    loss_module = build_loss(LossConfig.variant({"kind": loss})())
    return TrainModel(create_model(name, **changes), loss_module).to(torch.float64).train()


def _batches(k: int, b: int, size: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        tokens = torch.randint(1, 499, (b, 12), generator=g)
        tokens[:, -1] = 499  # end-of-text: the largest id
        out.append((torch.randn(b, 3, size, size, generator=g, dtype=torch.float64), tokens))
    return out


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _naive_reference(model: TrainModel, batches) -> torch.Tensor:
    """All micro-batches embedded with gradients in one graph, one loss over everything."""
    outs = [model(images, tokens) for images, tokens in batches]
    image = torch.cat([o[0] for o in outs])
    text = torch.cat([o[1] for o in outs])
    loss, _ = model.loss(image, text, **outs[-1][2])
    loss.backward()
    return loss.detach()


def _assert_same_grads(a: dict, b: dict, atol: float = 1e-10) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=lambda m: f"{name}: {m}")


def test_accumulation_equals_one_big_batch_vit():
    batches = _batches(4, 3, 32)
    big = (torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    one, acc = _model("tiny-vit"), _model("tiny-vit")
    loss_one, _ = forward_backward(one, [big], CPU)
    loss_acc, diag = forward_backward(acc, batches, CPU)
    assert loss_acc.item() == pytest.approx(loss_one.item(), abs=1e-10)
    assert 0.0 <= diag["i2t_acc"].item() <= 1.0
    _assert_same_grads(_grads(one), _grads(acc))


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_accumulation_with_batchnorm_matches_per_micro_batch_reference(kind):
    """ResNet: BatchNorm statistics are per micro-batch, and the running statistics move once per micro-batch."""
    batches = _batches(3, 4, 64)
    ref, acc = _model("tiny-rn", kind), _model("tiny-rn", kind)
    loss_ref = _naive_reference(ref, batches)
    loss_acc, _ = forward_backward(acc, batches, CPU)
    assert loss_acc.item() == pytest.approx(loss_ref.item(), abs=1e-10)
    _assert_same_grads(_grads(ref), _grads(acc))
    for (name, a), (_, b) in zip(ref.named_buffers(), acc.named_buffers()):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=lambda m: f"buffer {name}: {m}")


def test_accumulation_replays_patch_dropout_masks():
    batches = _batches(2, 3, 32)
    ref, acc = _model("tiny-vit", patch_dropout=0.5), _model("tiny-vit", patch_dropout=0.5)
    torch.manual_seed(7)
    _naive_reference(ref, batches)
    torch.manual_seed(7)
    forward_backward(acc, batches, CPU)
    _assert_same_grads(_grads(ref), _grads(acc))


def test_accumulation_with_a_locked_tower():
    batches = _batches(2, 3, 32)
    ref, acc = _model("tiny-vit"), _model("tiny-vit")
    for m in (ref, acc):
        m.clip.visual.requires_grad_(False)
    _naive_reference(ref, batches)
    forward_backward(acc, batches, CPU)
    grads = _grads(acc)
    assert not any(n.startswith("clip.visual.") for n in grads) and "clip.logit_scale" in grads
    _assert_same_grads(_grads(ref), grads)
