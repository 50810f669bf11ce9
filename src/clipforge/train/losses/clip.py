"""CLIP's loss: symmetric cross-entropy over the image-text similarities (paper section 2.3, Figure 3).

Distributed strategy: each rank gathers every rank's features with gradients
(:func:`clipforge.train.distributed.gather_features`) and computes only its own rows of the
similarity matrix, so memory grows linearly with the global batch (Figure 3's pseudo-code computed
the whole N×N matrix on one device). Each rank's loss is the mean over its own rows; data-parallel
training averages gradients over ranks, so R ranks × B samples give exactly the gradient of one
process with R·B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.train.distributed import gather_features
from clipforge.train.losses import Diagnostics, Loss, LossConfig, register_loss, upcast


@dataclass(frozen=True)
class ClipLossConfig(LossConfig):
    kind: str = "clip"
    init_logit_scale: float | None = None  # None: the model config's, ln(1/0.07) (paper section 2.5)
    max_logit_scale: float | None = 100.0  # exp(logit_scale) is clipped to this (section 2.5); None: no clip


def _rows(image_features: torch.Tensor, text_features: torch.Tensor,
          all_image_features: torch.Tensor | None, all_text_features: torch.Tensor | None,
          offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(all images [N, D], all texts [N, D], labels [B]): the positives of local row i sit at column offset + i."""
    if image_features.shape != text_features.shape:
        raise ValueError(
            f"image_features {tuple(image_features.shape)} and text_features {tuple(text_features.shape)} "
            "must have the same shape [B, D]"
        )
    all_images = image_features if all_image_features is None else all_image_features
    all_texts = text_features if all_text_features is None else all_text_features
    batch = image_features.shape[0]
    if offset + batch > all_texts.shape[0]:
        raise ValueError(f"offset {offset} + local batch {batch} exceeds the global batch {all_texts.shape[0]}")
    labels = torch.arange(offset, offset + batch, device=image_features.device)
    return all_images, all_texts, labels


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    all_image_features: torch.Tensor | None = None,
    all_text_features: torch.Tensor | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, Diagnostics]:
    """Symmetric cross-entropy over the image-text similarity matrix (paper section 2.3, Figure 3).

    ``image_features``/``text_features``: this rank's L2-normalized features [B, D];
    ``all_*``: every rank's features [N, D] (N = world size · B), rank-major; ``offset``: this
    rank's first row in them (rank · B); ``logit_scale``: the multiplier exp(t), a scalar tensor.
    Returns the loss (mean over local rows of the two directions' cross-entropies) and diagnostics:
    image→text and text→image accuracy over the local rows, and the logit scale.
    """
    all_images, all_texts, labels = _rows(image_features, text_features, all_image_features, all_text_features, offset)
    logits_per_image = logit_scale * image_features @ all_texts.t()  # [B, N]
    logits_per_text = logit_scale * text_features @ all_images.t()  # [B, N]
    loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    with torch.no_grad():
        diagnostics = {
            "i2t_acc": (logits_per_image.argmax(dim=1) == labels).float().mean(),
            "t2i_acc": (logits_per_text.argmax(dim=1) == labels).float().mean(),
            "logit_scale": logit_scale.detach().clone(),
        }
    return loss, diagnostics



class ClipLoss(Loss):
    config: ClipLossConfig

    def inputs(self, clip: nn.Module) -> dict[str, torch.Tensor]:
        return {"logit_scale": clip.logit_scale.exp()}

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor) -> tuple[torch.Tensor, Diagnostics]:
        image_features, text_features = upcast(image_features), upcast(text_features)
        all_images, offset = gather_features(image_features)
        all_texts, _ = gather_features(text_features)
        return clip_loss(image_features, text_features, upcast(logit_scale), all_image_features=all_images,
                         all_text_features=all_texts, offset=offset)

    @torch.no_grad()
    def init_model(self, clip: nn.Module) -> None:
        init_temperature(clip, self.config.init_logit_scale)

    @torch.no_grad()
    def after_step(self, clip: nn.Module) -> None:
        clamp_temperature(clip, self.config.max_logit_scale)


@torch.no_grad()
def init_temperature(clip: nn.Module, init_logit_scale: float | None) -> None:
    if init_logit_scale is not None:
        clip.logit_scale.fill_(init_logit_scale)


@torch.no_grad()
def clamp_temperature(clip: nn.Module, max_logit_scale: float | None) -> None:
    """Paper, section 2.5: the temperature is clipped so that exp(logit_scale) ≤ max (100)."""
    if max_logit_scale is not None:
        clip.logit_scale.clamp_(0, math.log(max_logit_scale))


register_loss(ClipLossConfig, ClipLoss)
