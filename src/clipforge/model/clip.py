"""CLIP: an image tower and a text tower projected into one space, compared with a learned temperature."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.config import ModelConfig
from clipforge.model.resnet import ModifiedResNet
from clipforge.model.text import TextTower
from clipforge.model.vit import VisionTransformer


class CLIP(TextTower, nn.Module):
    def __init__(self, config: ModelConfig):
        nn.Module.__init__(self)
        self.config = config
        vision_cls = ModifiedResNet if config.vision.is_resnet else VisionTransformer
        self.visual = vision_cls(config.vision, config.embed_dim)
        self._build_text(config.text, config.embed_dim)
        # Log-parameterised inverse temperature, initialised to ln(1/0.07) (paper section 2.5).
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    @property
    def dtype(self) -> torch.dtype:
        return self.logit_scale.dtype

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, S, S] → projected, unnormalized features [N, embed_dim]."""
        size = self.image_size
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2:] != (size, size):
            raise ValueError(f"images must have shape [N, 3, {size}, {size}] for this model, got {list(images.shape)}")
        return self.visual(images.to(self.dtype))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns L2-normalized image features [N, D], text features [M, D] and exp(logit_scale)."""
        image_features = F.normalize(self.encode_image(images), dim=-1)
        text_features = F.normalize(self.encode_text(tokens), dim=-1)
        return image_features, text_features, self.logit_scale.exp()

    def logits(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits_per_image [N, M], logits_per_text [M, N]), as OpenAI's ``CLIP.forward`` returns."""
        image_features, text_features, scale = self(images, tokens)
        logits_per_image = scale * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass instead of storing them (both towers)."""
        self.visual.set_grad_checkpointing(enable)
        self.transformer.grad_checkpointing = enable

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
