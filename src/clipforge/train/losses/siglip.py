"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023): every image-text pair is a binary task.

The learned bias is the model's own where it has one (SigLIP models: ``logit_bias``), else the loss's.
Distributed strategy (``exchange``): "ring" (default, :mod:`.ring`): the texts travel around the ranks
and each rank computes one [B, B] block at a time, so no rank holds more than B×B logits; "gather":
each rank takes its image rows against all N gathered texts, [B, N] at once. Both cover the N×N matrix
once and give the single-process loss and gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.train.distributed import gather_features
from clipforge.train.losses import Diagnostics, Loss, LossConfig, register_loss, upcast
from clipforge.train.losses.clip import _rows, clamp_temperature, init_temperature
from clipforge.train.losses.ring import ring_siglip_loss

EXCHANGES = ("ring", "gather")


@dataclass(frozen=True)
class SigLIPLossConfig(LossConfig):
    kind: str = "siglip"
    # Zhai et al. 2023, section 3: t' = log 10 and b = -10 at initialisation.
    init_logit_scale: float | None = math.log(10.0)
    init_logit_bias: float = -10.0
    max_logit_scale: float | None = 100.0  # as open_clip clamps every model's temperature; None: no clamp
    exchange: str = "ring"  # the distributed strategy: "ring" (one [B, B] block at a time) or "gather"


def siglip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    *,
    all_image_features: torch.Tensor | None = None,
    all_text_features: torch.Tensor | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, Diagnostics]:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023, Algorithm 1): every pair is a binary task.

    Shapes as :func:`clip_loss`; ``logit_bias`` is a learned scalar (SigLIP initialises it to -10 and
    the log scale to ln 10). Each rank takes its image rows against all N texts, which covers the
    N×N matrix once; the loss is -Σ log σ(z·(scale·x·y + bias)) divided by the local batch, the
    paper's normalisation (by |B|, not |B|²).
    """
    all_images, all_texts, labels = _rows(image_features, text_features, all_image_features, all_text_features, offset)
    logits = logit_scale * image_features @ all_texts.t() + logit_bias  # [B, N]
    signs = -torch.ones_like(logits)
    signs[torch.arange(labels.shape[0], device=logits.device), labels] = 1.0  # +1 on the positives
    loss = -F.logsigmoid(signs * logits).sum() / image_features.shape[0]
    with torch.no_grad():
        logits_per_text = text_features @ all_images.t()  # [B, N]; the scale does not change the argmax
        diagnostics = {
            "i2t_acc": (logits.argmax(dim=1) == labels).float().mean(),
            "t2i_acc": (logits_per_text.argmax(dim=1) == labels).float().mean(),
            "logit_scale": logit_scale.detach().clone(),
            "logit_bias": logit_bias.detach().clone(),
        }
    return loss, diagnostics


class SigLIPLoss(Loss):
    config: SigLIPLossConfig

    def __init__(self, config: SigLIPLossConfig):
        super().__init__(config)
        if config.exchange not in EXCHANGES:
            raise ValueError(f"loss.exchange {config.exchange!r}: expected one of {EXCHANGES}")
        self.logit_bias = nn.Parameter(torch.tensor(float(config.init_logit_bias)))

    def bind(self, clip: nn.Module) -> None:
        """A model with its own bias trains that one: the loss's would be a parameter DDP never sees used."""
        if getattr(clip, "logit_bias", None) is not None:
            self.logit_bias = None

    def inputs(self, clip: nn.Module) -> dict[str, torch.Tensor]:
        bias = getattr(clip, "logit_bias", None)
        return {"logit_scale": clip.logit_scale.exp(), "logit_bias": self.logit_bias if bias is None else bias}

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor) -> tuple[torch.Tensor, Diagnostics]:
        image_features, text_features = upcast(image_features), upcast(text_features)
        if self.config.exchange == "ring":
            return ring_siglip_loss(image_features, text_features, upcast(logit_scale), upcast(logit_bias))
        all_images, offset = gather_features(image_features)
        all_texts, _ = gather_features(text_features)
        return siglip_loss(image_features, text_features, upcast(logit_scale), upcast(logit_bias),
                           all_image_features=all_images, all_text_features=all_texts, offset=offset)

    @torch.no_grad()
    def init_model(self, clip: nn.Module) -> None:
        init_temperature(clip, self.config.init_logit_scale)
        if getattr(clip, "logit_bias", None) is not None:
            clip.logit_bias.fill_(self.config.init_logit_bias)

    @torch.no_grad()
    def after_step(self, clip: nn.Module) -> None:
        clamp_temperature(clip, self.config.max_logit_scale)


register_loss(SigLIPLossConfig, SigLIPLoss)
