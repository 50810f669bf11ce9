"""CLIP: an image tower and a text tower projected into one space, compared with a learned temperature."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipforge import families
from clipforge.config import ModelConfig


class CLIP(nn.Module):
    """The towers come from their families (``config.vision.kind``, ``config.text.kind``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.visual = families.of(config.vision).build(config.vision, config.embed_dim)
        families.of(config.text).attach(self, config.text, config.embed_dim)
        # Log-parameterised inverse temperature, initialised to ln(1/0.07) (paper section 2.5).
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        # SigLIP's learned bias (Zhai et al. 2023): logits = exp(logit_scale)·cos + logit_bias.
        bias = config.init_logit_bias
        self.logit_bias = None if bias is None else nn.Parameter(torch.tensor(float(bias)))

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

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids [N, L] (L ≤ context_length) → projected, unnormalized features [N, embed_dim]."""
        if tokens.dim() != 2 or tokens.is_floating_point():
            raise ValueError(f"tokens must be integer ids of shape [N, L], got {tokens.dtype} {list(tokens.shape)}")
        context = self.config.text.context_length
        if tokens.shape[1] > context:
            raise ValueError(f"token sequences of length {tokens.shape[1]} exceed the context length {context}")
        return families.of(self.config.text).encode(self, tokens)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns L2-normalized image features [N, D], text features [M, D] and exp(logit_scale)."""
        image_features = F.normalize(self.encode_image(images), dim=-1)
        text_features = F.normalize(self.encode_text(tokens), dim=-1)
        return image_features, text_features, self.logit_scale.exp()

    def logits(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits_per_image [N, M], logits_per_text [M, N]), as OpenAI's ``CLIP.forward`` returns
        (plus the learned bias for a model that has one, as transformers' ``SiglipModel``)."""
        image_features, text_features, scale = self(images, tokens)
        logits_per_image = scale * image_features @ text_features.t()
        if self.logit_bias is not None:
            logits_per_image = logits_per_image + self.logit_bias
        return logits_per_image, logits_per_image.t()

    def probabilities(self, cosine: torch.Tensor) -> torch.Tensor:
        """Cosine similarities [N, C] → what the model was trained to predict for each pair: a softmax
        over the C texts of exp(logit_scale)·cos (CLIP), or with a logit bias (SigLIP) an independent
        sigmoid(exp(logit_scale)·cos + logit_bias) per pair."""
        logits = self.logit_scale.exp().to(cosine.dtype) * cosine
        if self.logit_bias is None:
            return logits.softmax(dim=-1)
        return torch.sigmoid(logits + self.logit_bias.to(cosine.dtype))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass instead of storing them (both towers)."""
        families.of(self.config.vision).set_grad_checkpointing(self.visual, enable)
        text = families.of(self.config.text)
        text.set_grad_checkpointing(text.tower_module(self), enable)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
