"""Helpers several families share: counting blocks in a state_dict, resizing a positional grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    """How many numbered blocks ``{prefix}{i}.`` a state_dict holds."""
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def interpolate_grid(embedding: torch.Tensor, new_grid: int, extra_tokens: int) -> torch.Tensor:
    """A positional embedding [extra + G*G, W] resized to [extra + G'*G', W] (bicubic, extra tokens kept)."""
    old_grid = round((embedding.shape[0] - extra_tokens) ** 0.5)
    if old_grid == new_grid:
        return embedding
    extra, grid = embedding[:extra_tokens], embedding[extra_tokens:]
    grid = grid.reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2).float()  # [1, W, G, G]
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1).to(embedding.dtype)  # [G'*G', W]
    return torch.cat([extra, grid], dim=0)
