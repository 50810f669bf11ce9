"""Token trimming: cut a token batch after its longest caption (exact for causal, EOT-read towers)."""

from __future__ import annotations

import torch
from torch import nn

from clipforge import families


def trimmed_length(tokens: torch.Tensor, multiple: int = 8) -> int:
    """The shortest length that keeps every row's end-of-text token, rounded up to ``multiple``.

    ``tokens`` [N, L] int ids padded with 0 after the EOT, whose id is the largest in the vocabulary
    (``encode_text`` finds it with ``argmax``). The rounding bounds the number of distinct shapes
    (one compiled graph / one cuDNN plan per bucket). Reads a value to the host: a sync on CUDA.
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [N, L], got shape {tuple(tokens.shape)}")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    full = tokens.shape[1]
    if tokens.shape[0] == 0 or full == 0:
        return full
    longest = int(tokens.argmax(dim=1).max()) + 1  # EOT positions are 0-based
    return min(full, -(-longest // multiple) * multiple)


def trims_exactly(model: nn.Module) -> bool:
    """Whether :func:`trim_tokens` leaves ``model.encode_text``'s outputs unchanged (its text family says)."""
    return families.of(model.config.text).trims_exactly


def trim_tokens(tokens: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """Token ids [N, L] → [N, L'] with L' = ``trimmed_length(tokens, multiple)`` ≤ L (a view).

    ``model.encode_text`` gives the same features for both (the causal mask means no position
    attends to a later one, and the output is read at the EOT position, which is kept).
    """
    return tokens[:, : trimmed_length(tokens, multiple)]
