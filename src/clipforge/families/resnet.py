"""The ModifiedResNet family (OpenAI's RN50 ... RN50x64 image towers)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from clipforge.config import VisionConfig
from clipforge.families import Groups, State, VisionFamily, register
from clipforge.families.common import count_blocks, interpolate_grid
from clipforge.model.resnet import Bottleneck, ModifiedResNet

_STRIDE = 32  # the ResNet downsamples by 32 before its attention pool


class ResNetFamily(VisionFamily):
    kind, title = "resnet", "ModifiedResNet"
    adam = (0.999, 1e-8)  # paper, Appendix F, Table 19
    inference_chunk_rows = 8192  # stem output positions per CPU piece: 2 RN50 images at 224 px, 32 demo-rn at 64

    def build(self, config: VisionConfig, output_dim: int) -> nn.Module:
        layers = config.layers
        if isinstance(layers, int) or len(layers) != 4:
            raise ValueError(f"a ModifiedResNet needs 4 block counts in vision.layers, got {layers!r}")
        return ModifiedResNet(config, output_dim, self.default_heads(config))

    def default_heads(self, config: VisionConfig) -> int:
        return config.heads if config.heads is not None else config.width * 32 // 64  # OpenAI's rule

    def layer_groups(self, tower: nn.Module) -> Groups:
        stem = [tower.conv1, tower.bn1, tower.conv2, tower.bn2, tower.conv3, tower.bn3]
        return [stem, *[[getattr(tower, f"layer{i}")] for i in range(1, 5)], [tower.attnpool]]

    def shard_units(self, tower: nn.Module) -> list[nn.Module]:
        return [m for m in tower.modules() if isinstance(m, Bottleneck)]

    def set_grad_checkpointing(self, tower: nn.Module, enable: bool) -> None:
        tower.grad_checkpointing = enable

    def describe(self, config: VisionConfig) -> str:
        return f"ModifiedResNet {'-'.join(map(str, config.layers))} w{config.width}"

    def rows_per_item(self, config: VisionConfig, x: torch.Tensor) -> int:
        return (x.shape[-1] // 4) ** 2  # positions after the stem

    def matches(self, state: State) -> bool:
        return "visual.attnpool.positional_embedding" in state

    def infer_config(self, state: State, act: str) -> VisionConfig:
        grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        layers = tuple(count_blocks(state, f"visual.layer{i}.") for i in range(1, 5))
        return VisionConfig(image_size=grid * _STRIDE, layers=layers, width=state["visual.layer1.0.conv1.weight"].shape[0],
                            patch_size=None, act=act, kind=self.kind)

    def resize_positions(self, state: State, config: VisionConfig, image_size: int) -> VisionConfig:
        """The mean token's embedding is kept; the grid is resized bicubically."""
        self.check_image_size(config, image_size)
        key = "visual.attnpool.positional_embedding"
        state[key] = interpolate_grid(state[key], image_size // _STRIDE, extra_tokens=1)
        return dataclasses.replace(config, image_size=image_size)


    def check_image_size(self, config: VisionConfig, image_size: int) -> None:
        if image_size % _STRIDE:
            raise ValueError(f"image_size {image_size} is not a multiple of {_STRIDE} for a ModifiedResNet "
                             "(its attention pool reads a grid of image_size / 32 positions)")


register(ResNetFamily())
