"""What training optimizes: the CLIP model plus the loss's own parameters, behind one ``forward``.

DDP and FSDP wrap this module, so every trainable tensor (the CLIP weights, ``logit_scale`` and
SigLIP's ``logit_bias``) is synchronised by the same machinery. The model's weights keep OpenAI's
layout under ``.clip``; the bias is saved in the training state, not with the model (zero-shot
prediction does not depend on it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from clipforge import fastpath
from clipforge.model import CLIP
from clipforge.train.distributed import gather_features
from clipforge.train.loss import Diagnostics, clip_loss, siglip_loss

LOSSES = ("clip", "siglip")
# SigLIP (Zhai et al. 2023, section 3): t' = log 10 and b = -10 at initialisation.
SIGLIP_INIT_LOGIT_SCALE = math.log(10.0)
SIGLIP_INIT_LOGIT_BIAS = -10.0


class TrainModel(nn.Module):
    """CLIP + loss parameters. ``forward(images, tokens)`` → normalized features and loss scalars.

    Returns ``(image_features [B, D], text_features [B, D], scale, bias)`` where ``scale`` is
    exp(logit_scale) and ``bias`` is SigLIP's logit bias (``None`` for the CLIP loss).
    """

    def __init__(self, clip: CLIP, loss: str = "clip", channels_last: bool = False):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss {loss!r}: expected one of {LOSSES}")
        self.clip, self.loss = clip, loss
        if channels_last:
            fastpath.channels_last(self.clip)  # NHWC ResNet weights; a no-op for a ViT
        self.logit_bias = nn.Parameter(torch.tensor(SIGLIP_INIT_LOGIT_BIAS)) if loss == "siglip" else None

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        image_features = F.normalize(self.clip.encode_image(images), dim=-1)
        text_features = F.normalize(self.clip.encode_text(tokens), dim=-1)
        return image_features, text_features, self.clip.logit_scale.exp(), self.logit_bias

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)

    @property
    def config(self):
        return self.clip.config

    @property
    def image_size(self) -> int:
        return self.clip.image_size


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors to float32; float32/float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def compute_loss(kind: str, image_features: torch.Tensor, text_features: torch.Tensor,
                 scale: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, Diagnostics]:
    """This rank's loss over its rows against all ranks' features (gathered with gradients).

    Features are taken in float32 whatever the autocast precision: the softmax over a large batch
    is where half precision loses most.
    """
    image_features, text_features = upcast(image_features), upcast(text_features)
    all_images, offset = gather_features(image_features)
    all_texts, _ = gather_features(text_features)
    common = dict(all_image_features=all_images, all_text_features=all_texts, offset=offset)
    if kind == "siglip":
        return siglip_loss(image_features, text_features, upcast(scale), upcast(bias), **common)
    return clip_loss(image_features, text_features, upcast(scale), **common)
