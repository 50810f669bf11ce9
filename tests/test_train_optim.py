"""AdamW groups and hyper-parameters, the schedule, locked towers, the logit-scale clamp, clipping."""

from __future__ import annotations

import math

import pytest
import torch

from clipforge import families
from clipforge.config import MAX_LOGIT_SCALE
from clipforge.factory import create_model
from clipforge.train.losses import build_loss
from clipforge.train.losses.clip import ClipLossConfig
from clipforge.train.losses.siglip import SigLIPLossConfig
from clipforge.train.objective import TrainModel
from clipforge.train.optim import (
    OptimConfig, ScheduleConfig, apply_locks, build_optimizer, clip_gradients,
    image_layer_groups, learning_rate, param_groups,
)

SMALL = {"text": {"vocab_size": 500, "context_length": 12}}
VIT, RESNET = families.vision_family("vit").adam, families.vision_family("resnet").adam


def test_no_weight_decay_on_gains_biases_1d_and_the_loss_scalars():
    model = TrainModel(create_model("tiny-vit", **SMALL), build_loss(SigLIPLossConfig()))
    decay, no_decay = param_groups(model, 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert {"clip.logit_scale", "loss.logit_bias", "clip.visual.class_embedding", "clip.ln_final.weight",
            "clip.ln_final.bias", "clip.transformer.resblocks.0.attn.in_proj_bias"} <= exempt
    assert {"clip.text_projection", "clip.visual.proj", "clip.token_embedding.weight",
            "clip.transformer.resblocks.0.mlp.c_fc.weight", "clip.visual.conv1.weight"} <= decayed
    assert all(p.ndim >= 2 for p in decay["params"]) and len(decayed) + len(exempt) == len(names)


@pytest.mark.parametrize("name, betas, eps", [
    ("tiny-vit", (0.9, 0.98), 1e-6),
    ("tiny-rn", (0.9, 0.999), 1e-8),
])
def test_adam_hyper_parameters_follow_the_paper_by_family(name, betas, eps):
    model = create_model(name, **SMALL)
    family = families.of(model.config.vision).adam  # the paper's Appendix F values, declared by the family
    optimizer = build_optimizer(model, OptimConfig(lr=5e-4), family)
    group = optimizer.param_groups[0]
    assert group["betas"] == betas and group["eps"] == eps and group["lr"] == 5e-4
    custom = build_optimizer(model, OptimConfig(beta2=0.95, eps=1e-5), family).param_groups[0]
    assert custom["betas"] == (0.9, 0.95) and custom["eps"] == 1e-5


def test_warmup_then_cosine_schedule():
    cfg = ScheduleConfig(warmup_steps=10, min_lr=0.0)
    lrs = [learning_rate(step, 1.0, 110, cfg) for step in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert lrs[60] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 1e-3
    assert learning_rate(50, 1.0, 110, ScheduleConfig(kind="constant", warmup_steps=10)) == 1.0
    with pytest.raises(ValueError, match="schedule.kind"):
        learning_rate(0, 1.0, 10, ScheduleConfig(kind="step"))


def test_lit_locks_the_image_tower_but_its_last_groups():
    clip = create_model("tiny-rn", **SMALL)
    frozen = apply_locks(clip, OptimConfig(lock_image=True, lock_image_unlocked_groups=2))
    groups = image_layer_groups(clip)
    assert len(groups) == 6  # stem, 4 stages, attention pool
    assert not any(p.requires_grad for p in clip.visual.layer3.parameters())
    assert all(p.requires_grad for p in clip.visual.layer4.parameters())
    assert all(p.requires_grad for p in clip.visual.attnpool.parameters())
    assert all(p.requires_grad for p in clip.transformer.parameters()) and clip.logit_scale.requires_grad
    assert clip.visual.bn1 in frozen and clip.visual.layer4 not in frozen
    optimizer = build_optimizer(clip, OptimConfig(), RESNET)
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(clip.visual.conv1.weight) not in optimized and id(clip.visual.layer4[0].conv1.weight) in optimized


def test_locking_everything_is_an_error_and_text_tower_locks_by_layer():
    clip = create_model("tiny-vit", **SMALL)
    apply_locks(clip, OptimConfig(lock_text=True, lock_text_unlocked_layers=1))
    assert not clip.token_embedding.weight.requires_grad and not clip.transformer.resblocks[1].ln_1.weight.requires_grad
    assert clip.text_projection.requires_grad and clip.ln_final.weight.requires_grad
    with pytest.raises(ValueError, match="unlocked"):
        apply_locks(clip, OptimConfig(lock_image=True, lock_image_unlocked_groups=99))
    clip.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(clip, OptimConfig(), VIT)


@pytest.mark.parametrize("config", [ClipLossConfig(), SigLIPLossConfig()])
def test_logit_scale_is_clamped_to_100_after_each_step(config):
    clip = create_model("tiny-vit", **SMALL)
    with torch.no_grad():
        clip.logit_scale.fill_(7.0)
    build_loss(config).after_step(clip)
    assert clip.logit_scale.item() == pytest.approx(MAX_LOGIT_SCALE) and clip.logit_scale.exp().item() == pytest.approx(100)
    with torch.no_grad():
        clip.logit_scale.fill_(7.0)
    build_loss(ClipLossConfig(max_logit_scale=None)).after_step(clip)
    assert clip.logit_scale.item() == 7.0


def test_gradient_norm_and_clipping():
    model = torch.nn.Linear(3, 2)
    model.weight.grad = torch.full((2, 3), 2.0)
    model.bias.grad = torch.zeros(2)
    norm = clip_gradients(model, None)
    assert isinstance(norm, torch.Tensor) and norm.dim() == 0 and norm.dtype == torch.float32
    assert norm.item() == pytest.approx(math.sqrt(6 * 4))
    assert torch.equal(model.weight.grad, torch.full((2, 3), 2.0))  # no clipping asked for
    assert clip_gradients(model, 1.0).item() == pytest.approx(norm.item())  # the norm before clipping
    assert torch.linalg.vector_norm(model.weight.grad).item() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_a_non_finite_gradient_gives_a_non_finite_norm_with_or_without_clipping(bad):
    """No host read guards the clipping: a non-finite norm must stay non-finite (so the trainer skips)."""
    model = torch.nn.Linear(3, 2)
    for max_norm in (None, 1.0):
        model.weight.grad = torch.full((2, 3), 2.0)
        model.bias.grad = torch.tensor([bad, 0.0])
        norm = clip_gradients(model, max_norm)
        assert not math.isfinite(norm.item())
        assert not math.isfinite(clip_gradients(model, None).item())  # and the clipped gradients too


def test_fused_adamw_is_an_option():
    model = TrainModel(create_model("tiny-rn", **SMALL), build_loss(ClipLossConfig()))
    assert build_optimizer(model, OptimConfig(), RESNET).defaults["foreach"] is True
    fused = build_optimizer(model, OptimConfig(fused=True), RESNET)
    assert fused.defaults["fused"] is True and not fused.defaults["foreach"]
