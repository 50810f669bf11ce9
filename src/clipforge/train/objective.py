"""What training optimizes: the CLIP model plus the loss component, behind one ``forward``.

DDP and FSDP wrap this module, so every trainable tensor (the CLIP weights, ``logit_scale`` and a
loss's own parameters such as SigLIP's ``logit_bias``) is synchronised by the same machinery. The
model's weights keep their checkpoint layout under ``.clip``; the loss's parameters are saved in the
training state, not with the model (zero-shot prediction does not depend on them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipforge import fastpath
from clipforge.model import CLIP
from clipforge.train.losses import Loss


class TrainModel(nn.Module):
    """CLIP + loss. ``forward(images, tokens)`` → ``(image_features [B, D], text_features [B, D],
    inputs)``: normalized features and the tensors the loss needs from parameters (``Loss.inputs``)."""

    def __init__(self, clip: CLIP, loss: Loss, channels_last: bool = False):
        super().__init__()
        self.clip, self.loss = clip, loss
        loss.bind(clip)
        if channels_last:
            fastpath.channels_last(self.clip)  # NHWC weights for BatchNorm towers; a no-op otherwise

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        image_features = F.normalize(self.clip.encode_image(images), dim=-1)
        text_features = F.normalize(self.clip.encode_text(tokens), dim=-1)
        return image_features, text_features, self.loss.inputs(self.clip)

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
