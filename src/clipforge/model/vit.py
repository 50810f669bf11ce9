"""The Vision Transformer image tower (paper section 2.4; Dosovitskiy et al. 2020).

Differences from the original ViT, as in OpenAI's model: no bias in the patch convolution, and an
extra LayerNorm (``ln_pre``) on the patch + position embeddings before the transformer.
"""

from __future__ import annotations

import torch
from torch import nn

from clipforge.config import VisionConfig
from clipforge.model.layers import Transformer


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig, output_dim: int, heads: int):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        self.image_size, self.patch_size = cfg.image_size, cfg.patch_size
        self.patch_dropout = cfg.patch_dropout
        width, grid = cfg.width, cfg.image_size // cfg.patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, cfg.layers, heads, cfg.mlp_ratio, cfg.act)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, S, S] → projected features [N, output_dim]."""
        x = self.conv1(x)  # [N, W, G, G]
        x = x.flatten(2).transpose(1, 2)  # [N, G*G, W]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [N, 1, W]
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # [N, G*G+1, W]
        if self.training and self.patch_dropout > 0:
            x = self._drop_patches(x)
        x = self.ln_pre(x)
        x = self.transformer(x, index=0)  # the class token's output, [N, W]
        return self.ln_post(x) @ self.proj

    def _drop_patches(self, x: torch.Tensor) -> torch.Tensor:
        """FLIP (Li et al. 2023): keep a random subset of patch tokens per image; the class token stays."""
        n, length, width = x.shape
        keep = max(1, int((length - 1) * (1 - self.patch_dropout)))
        scores = torch.rand(n, length - 1, device=x.device)
        idx = scores.topk(keep, dim=1).indices + 1  # [N, keep], offsets past the class token
        patches = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, width))  # [N, keep, W]
        return torch.cat([x[:, :1], patches], dim=1)
