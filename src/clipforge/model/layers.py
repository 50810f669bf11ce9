"""Transformer building blocks shared by the image and text towers.

Parameter names follow OpenAI's checkpoints (``attn.in_proj_weight``, ``mlp.c_fc``, ``ln_1`` ...)
so released state_dicts load with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

Index = int | torch.Tensor  # a token position: one for all rows, or one per row [N]


class QuickGELU(nn.Module):
    """x · σ(1.702 x): the sigmoid approximation of GELU that OpenAI's released weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = ("quick_gelu", "gelu", "gelu_tanh")


def make_activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":  # GELU's tanh approximation: big_vision's (flax) default, SigLIP's weights
        return nn.GELU(approximate="tanh")
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``.

    Same parameters as ``nn.MultiheadAttention`` (packed ``in_proj_weight`` [3W, W]), batch-first.
    """

    def __init__(self, width: int, heads: int, causal: bool = False):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.causal = heads, causal
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's default
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, index: Index | None = None) -> torch.Tensor:
        """[N, L, W] → [N, L, W]; with ``index``, only that position's output, [N, 1, W].

        ``index`` (an int, or a LongTensor [N] of one position per row) is the token the tower reads
        out: queries are projected for it alone, keys and values for every position, so the result
        equals the full attention's row at ``index`` with a fraction of the work.
        """
        return self.out_proj(self.attend(x, index))

    def attend(self, x: torch.Tensor, index: Index | None = None) -> torch.Tensor:
        """The heads' outputs, concatenated, before ``out_proj``: [N, L, W] (or [N, 1, W] with ``index``)."""
        n, length, width = x.shape
        head_dim = width // self.heads
        if index is None:
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [N, L, 3W]
            qkv = qkv.view(n, length, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)  # [3, N, H, L, W/H]
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=self.causal)  # [N, H, L, W/H]
            return out.transpose(1, 2).reshape(n, length, width)
        w_q, w_kv = self.in_proj_weight.split([width, 2 * width])
        b_q, b_kv = self.in_proj_bias.split([width, 2 * width])
        q = F.linear(take(x, index), w_q, b_q).view(n, 1, self.heads, head_dim).transpose(1, 2)  # [N, H, 1, W/H]
        kv = F.linear(x, w_kv, b_kv).view(n, length, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)  # [2, N, H, L, W/H]
        mask = None
        if self.causal:  # the query at position p sees keys 0..p
            positions = torch.arange(length, device=x.device)
            last = index.view(n, 1) if isinstance(index, torch.Tensor) else torch.full((n, 1), index, device=x.device)
            mask = (positions.view(1, length) <= last).view(n, 1, 1, length)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)  # [N, H, 1, W/H]
        return out.transpose(1, 2).reshape(n, 1, width)

    def pool(self, queries: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Learned queries [N, Q, W] attend over ``x`` [N, L, W] (no mask) → [N, Q, W], after ``out_proj``.

        The same function as ``nn.MultiheadAttention(queries, x, x)`` with these parameters.
        """
        n, length, width = x.shape
        count, head_dim = queries.shape[1], width // self.heads
        w_q, w_kv = self.in_proj_weight.split([width, 2 * width])
        b_q, b_kv = self.in_proj_bias.split([width, 2 * width])
        q = F.linear(queries, w_q, b_q).view(n, count, self.heads, head_dim).transpose(1, 2)  # [N, H, Q, W/H]
        kv = F.linear(x, w_kv, b_kv).view(n, length, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)  # [2, N, H, L, W/H]
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # [N, H, Q, W/H]
        return self.out_proj(out.transpose(1, 2).reshape(n, count, width))


def take(x: torch.Tensor, index: Index) -> torch.Tensor:
    """[N, L, W] → [N, 1, W]: position ``index`` of every row (an int, or one position per row [N])."""
    if isinstance(index, int):
        return x[:, index : index + 1]
    return x[torch.arange(x.shape[0], device=x.device), index].unsqueeze(1)


class MLP(nn.Sequential):
    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = make_activation(act)
        self.c_proj = nn.Linear(hidden, width)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)). ``eps``: the LayerNorms' (torch's
    default 1e-5 is OpenAI's; SigLIP's is 1e-6)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, act: str = "quick_gelu", causal: bool = False,
                 eps: float = 1e-5):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads, causal=causal)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, int(width * mlp_ratio), act)

    def forward(self, x: torch.Tensor, index: Index | None = None) -> torch.Tensor:
        """[N, L, W] → [N, L, W]; with ``index`` only that position's output [N, 1, W] is computed."""
        if index is None:
            x = x + self.attn(self.ln_1(x))
        else:
            x = take(x, index) + self.attn(self.ln_1(x), index)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks on batch-first tensors [N, L, W]."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, act: str = "quick_gelu",
                 causal: bool = False, eps: float = 1e-5):
        super().__init__()
        self.width, self.layers = width, layers
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_ratio, act, causal, eps) for _ in range(layers)]
        )

    def forward(self, x: torch.Tensor, index: Index | None = None) -> torch.Tensor:
        """[N, L, W] → [N, L, W]; with ``index``, the output at that position only, [N, W].

        The towers read one token (the image's class token, the text's end-of-text token), so the last
        block needs that token's query, attention and MLP alone (keys and values for all): 5/6 of its
        matrix work is skipped (about 7% of ViT-B/32's image tower) and the outputs are the same.
        """
        last = len(self.resblocks) - 1
        if last < 0 and index is not None:
            return take(x, index).squeeze(1)
        for i, block in enumerate(self.resblocks):
            at = index if i == last else None
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, at, use_reentrant=False)
            else:
                x = block(x, at)
        return x if index is None else x.squeeze(1)

    def init_openai(self) -> None:
        """OpenAI's initialisation of the text transformer (CLIP.initialize_parameters)."""
        proj_std = (self.width**-0.5) * ((2 * self.layers) ** -0.5)
        attn_std = self.width**-0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
