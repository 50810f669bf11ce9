"""Transformer blocks for inference without autograd: each residual added inside its projection's GEMM.

``x + (a Wᵀ + b)`` is computed as ``(x + b) + a Wᵀ`` in place (``addmm_`` with beta = 1): one pass over
the residual and no temporary, where the plain form copies the bias into a new tensor, multiplies
into it and then adds x into a third. QuickGELU becomes one in-place SiLU,
h·σ(1.702 h) = silu(1.702 h) / 1.702, with the 1.702 applied by the first GEMM's ``alpha``/``beta``
and the 1/1.702 by the second's ``alpha``: the block's largest tensor is written by the GEMM and
rewritten once. The same function as the plain block up to float rounding (~1 ulp).

:func:`fuse_blocks` swaps the class of every block of a model (parameters and state_dict unchanged);
with autograd or autocast on, a fused block runs the plain forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.model.layers import MLP, Index, QuickGELU, ResidualAttentionBlock, take


def _mlp_hidden(mlp: MLP, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The activated hidden rows for ``x`` [M, W], and the factor ``c_proj``'s product must be scaled by."""
    if isinstance(mlp.gelu, QuickGELU):
        hidden = torch.addmm(mlp.c_fc.bias, x, mlp.c_fc.weight.t(), beta=1.702, alpha=1.702)
        return F.silu(hidden, inplace=True), 1 / 1.702
    return mlp.gelu(mlp.c_fc(x)), 1.0


def _records_autograd(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether autograd would record ``module``'s forward on ``x`` (else in-place shortcuts are safe)."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


class FusedResidualAttentionBlock(ResidualAttentionBlock):
    def forward(self, x: torch.Tensor, index: Index | None = None) -> torch.Tensor:
        if _records_autograd(self, x) or torch.is_autocast_enabled(x.device.type):
            return super().forward(x, index)
        attended = self.attn.attend(self.ln_1(x), index)  # [N, L', W], L' = 1 with index
        n, length, width = attended.shape
        x = x if index is None else take(x, index)
        x = (x + self.attn.out_proj.bias).view(-1, width)
        x.addmm_(attended.view(-1, width), self.attn.out_proj.weight.t())
        hidden, scale = _mlp_hidden(self.mlp, self.ln_2(x))
        x = (x + self.mlp.c_proj.bias).addmm_(hidden, self.mlp.c_proj.weight.t(), alpha=scale)
        return x.view(n, length, width)


def fuse_blocks(model: nn.Module) -> int:
    """Turn every ``ResidualAttentionBlock`` of ``model`` into a fused one, in place; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is ResidualAttentionBlock:
            module.__class__ = FusedResidualAttentionBlock
            count += 1
    return count
