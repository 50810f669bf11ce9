"""A toy model family, written the way a new family is added: this module and its ``register`` calls.

Image tower "toy_pool": average-pool the image to a 4×4 grid and project it (a linear probe on
pixels). Text tower "toy_bag": the mean of the token embeddings of a caption (order-free, so its
outputs depend on positions after the caption: trimming is not exact for it).
Nothing outside this file knows these towers exist.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from clipforge import families
from clipforge.config import TextConfig, VisionConfig


class PoolTower(nn.Module):
    def __init__(self, config: VisionConfig, output_dim: int):
        super().__init__()
        self.stem = nn.Linear(3 * 16, config.width)
        self.head = nn.Linear(config.width, output_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(images, 4).flatten(1)  # [N, 48]
        return self.head(torch.relu(self.stem(x)))


class ToyPoolFamily(families.VisionFamily):
    kind, title = "toy_pool", "toy pooled pixels"
    adam = (0.95, 1e-7)

    def build(self, config, output_dim):
        return PoolTower(config, output_dim)

    def default_heads(self, config):
        return 1

    def layer_groups(self, tower):
        return [[tower.stem], [tower.head]]

    def shard_units(self, tower):
        return [tower.stem]

    def set_grad_checkpointing(self, tower, enable):
        tower.checkpointing = enable

    def rows_per_item(self, config, x):
        return 1

    def matches(self, state):
        return "visual.stem.weight" in state

    def infer_config(self, state, act):
        return VisionConfig(image_size=32, width=state["visual.stem.weight"].shape[0], kind=self.kind)

    def resize_positions(self, state, config, image_size):
        return dataclasses.replace(config, image_size=image_size)  # no positions: any size works


class BagTower(nn.Module):
    def __init__(self, config: TextConfig, output_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(config.vocab_size, config.width)
        self.proj = nn.Linear(config.width, output_dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embedding(tokens).mean(dim=1))


class ToyBagFamily(families.TextFamily):
    kind, title = "toy_bag", "toy bag of words"
    trims_exactly = False  # padding positions enter the mean

    def attach(self, clip, config, output_dim):
        clip.text = BagTower(config, output_dim)

    def encode(self, clip, tokens):
        return clip.text(tokens)

    def tower_module(self, clip):
        return clip.text

    def layer_groups(self, tower):
        return [[tower.embedding], [tower.proj]]

    def shard_units(self, tower):
        return [tower.proj]

    def set_grad_checkpointing(self, tower, enable):
        tower.checkpointing = enable

    def rows_per_item(self, config, x):
        return x.shape[1]


FAMILIES = (ToyPoolFamily(), ToyBagFamily())
