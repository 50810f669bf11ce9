"""SigLIP's towers (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training"; SigLIP 2, Tschannen
et al. 2025, keeps them): the architecture of big_vision, open_clip's SigLIP configs and transformers'
``SiglipModel``.

Differences from CLIP's towers:

* image: the patch convolution has a bias, there is no class token and no ``ln_pre``; the tokens get a
  learned positional embedding, pass the Transformer and a final LayerNorm, and a multi-head attention
  pooling head (MAP: one learned probe attends over all tokens, then a residual MLP; Lee et al. 2019,
  as in Zhai et al. 2022, "Scaling Vision Transformers") gives the image features. No projection: the
  features have the tower's width.
* text: no causal mask; the features are read at the last position (a padding token for all but the
  longest captions: SigLIP pads every caption to its context, 64) and mapped by a linear head with bias.
* LayerNorm ε 1e-6, GELU's tanh approximation (big_vision's defaults, ``gelu_pytorch_tanh`` in HF).

The blocks are CLIP's (:mod:`clipforge.model.layers`), which compute the same function.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from clipforge.config import TextConfig, VisionConfig
from clipforge.model.layers import MLP, Attention, Transformer

LAYER_NORM_EPS = 1e-6  # big_vision's LayerNorm epsilon (flax's default)


def mlp_width(width: int, mlp_ratio: float) -> int:
    return int(width * mlp_ratio)  # as ResidualAttentionBlock sizes its MLP


class MAPHead(nn.Module):
    """Multi-head attention pooling: a learned probe attends over the tokens, then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, hidden: int, act: str):
        super().__init__()
        self.probe = nn.Parameter(torch.empty(1, 1, width))
        self.attn = Attention(width, heads)
        self.ln = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.mlp = MLP(width, hidden, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens [N, L, W] → pooled features [N, W]."""
        x = self.attn.pool(self.probe.to(x.dtype).expand(x.shape[0], -1, -1), x)  # [N, 1, W]
        x = x + self.mlp(self.ln(x))
        return x[:, 0]


class SigLIPVisionTower(nn.Module):
    """Images [N, 3, S, S] → image features [N, width] (``image_size // patch_size`` patches a side:
    like a 'valid' convolution, pixels past the last whole patch are not seen, e.g. 384 px at patch 14)."""

    def __init__(self, cfg: VisionConfig, heads: int):
        super().__init__()
        width, grid = cfg.width, cfg.image_size // cfg.patch_size
        self.image_size, self.patch_size, self.patch_dropout = cfg.image_size, cfg.patch_size, cfg.patch_dropout
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.positional_embedding = nn.Parameter(torch.empty(grid * grid, width))
        self.transformer = Transformer(width, cfg.layers, heads, cfg.mlp_ratio, cfg.act, eps=LAYER_NORM_EPS)
        self.ln_post = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.head = MAPHead(width, heads, mlp_width(width, cfg.mlp_ratio), cfg.act)
        init_siglip(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # [N, W, G, G]
        x = x.flatten(2).transpose(1, 2).contiguous() + self.positional_embedding.to(x.dtype)  # [N, G*G, W]
        if self.training and self.patch_dropout > 0:
            x = _drop_patches(x, self.patch_dropout)
        x = self.transformer(x)
        return self.head(self.ln_post(x))  # [N, W]


def _drop_patches(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """FLIP (Li et al. 2023): keep a random subset of the tokens [N, L, W] of each image (no class token here)."""
    n, length, width = x.shape
    keep = max(1, int(length * (1 - fraction)))
    idx = torch.rand(n, length, device=x.device).topk(keep, dim=1).indices  # [N, keep]
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, width))


class SigLIPTextTower(nn.Module):
    """Token ids [N, L] (L ≤ context) → text features [N, output_dim]: bidirectional, read at position L-1."""

    def __init__(self, cfg: TextConfig, output_dim: int):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.num_heads, cfg.mlp_ratio, cfg.act,
                                       eps=LAYER_NORM_EPS)
        self.ln_final = nn.LayerNorm(cfg.width, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(cfg.width, output_dim)
        init_siglip(self)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:length]  # [N, L, W]
        # Every position sees every other, so only the last block can be cut to the token that is read.
        x = self.transformer(x, index=length - 1)  # [N, W]
        return self.head(self.ln_final(x))


@torch.no_grad()
def init_siglip(tower: nn.Module) -> None:
    """big_vision's initialisation (as transformers' SiglipPreTrainedModel applies it): embeddings and
    positions normal with std width^-½, attention and MLP weights Xavier-uniform (q, k, v each on its
    own), MLP biases N(0, 1e-6), other linear maps and the patch convolution LeCun-normal, biases zero."""
    in_blocks = {id(m) for parent in tower.modules() if isinstance(parent, (Attention, MLP)) for m in parent.modules()}
    for module in tower.modules():
        if isinstance(module, Attention):
            for part in module.in_proj_weight.chunk(3):  # q, k, v: three W×W matrices
                nn.init.xavier_uniform_(part)
            nn.init.xavier_uniform_(module.out_proj.weight)
            nn.init.zeros_(module.in_proj_bias)
            nn.init.zeros_(module.out_proj.bias)
        elif isinstance(module, MLP):
            for linear in (module.c_fc, module.c_proj):
                nn.init.xavier_uniform_(linear.weight)
                nn.init.normal_(linear.bias, std=1e-6)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=module.embedding_dim**-0.5)
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and id(module) not in in_blocks:
            # LeCun normal: truncated at two standard deviations, rescaled to variance 1 / fan_in.
            std = module.weight[0].numel() ** -0.5 / 0.87962566103423978
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, MAPHead):
            nn.init.xavier_uniform_(module.probe)
    nn.init.normal_(tower.positional_embedding, std=tower.positional_embedding.shape[1] ** -0.5)
