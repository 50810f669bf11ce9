"""The Vision Transformer family (OpenAI's ViT image tower, open_clip's ViT zoo)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from clipforge.config import VisionConfig
from clipforge.families import Groups, State, VisionFamily, register
from clipforge.families.common import count_blocks, interpolate_grid
from clipforge.model.vit import VisionTransformer


class ViTFamily(VisionFamily):
    kind, title, hf_model = "vit", "ViT", "CLIPModel"
    adam = (0.98, 1e-6)  # paper, Appendix F, Table 20

    def build(self, config: VisionConfig, output_dim: int) -> nn.Module:
        if not isinstance(config.layers, int):
            raise ValueError(f"a ViT needs an int vision.layers, got {config.layers!r} (a 4-tuple is a ModifiedResNet: "
                             "set vision.kind = 'resnet')")
        return VisionTransformer(config, output_dim, self.default_heads(config))

    def default_heads(self, config: VisionConfig) -> int:
        return config.heads if config.heads is not None else config.width // 64  # OpenAI's rule

    def layer_groups(self, tower: nn.Module) -> Groups:
        stem = [tower.conv1, tower.class_embedding, tower.positional_embedding, tower.ln_pre]
        return [stem, *[[block] for block in tower.transformer.resblocks], [tower.ln_post, tower.proj]]

    def shard_units(self, tower: nn.Module) -> list[nn.Module]:
        return list(tower.transformer.resblocks)

    def set_grad_checkpointing(self, tower: nn.Module, enable: bool) -> None:
        tower.transformer.grad_checkpointing = enable

    def describe(self, config: VisionConfig) -> str:
        return f"ViT {config.layers}L w{config.width} /{config.patch_size}"

    def rows_per_item(self, config: VisionConfig, x: torch.Tensor) -> int:
        return (x.shape[-1] // config.patch_size) ** 2 + 1  # patches + the class token

    def matches(self, state: State) -> bool:
        return "visual.proj" in state and "visual.class_embedding" in state

    def infer_config(self, state: State, act: str) -> VisionConfig:
        width, _, patch, _ = state["visual.conv1.weight"].shape
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        return VisionConfig(
            image_size=patch * grid, layers=count_blocks(state, "visual.transformer.resblocks."), width=width,
            patch_size=patch, mlp_ratio=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
            act=act, kind=self.kind,
        )

    def resize_positions(self, state: State, config: VisionConfig, image_size: int) -> VisionConfig:
        """The class token's embedding is kept; the patch grid is resized bicubically (as open_clip)."""
        self.check_image_size(config, image_size)
        key = "visual.positional_embedding"
        state[key] = interpolate_grid(state[key], image_size // config.patch_size, extra_tokens=1)
        return dataclasses.replace(config, image_size=image_size)

    def check_image_size(self, config: VisionConfig, image_size: int) -> None:
        if image_size % config.patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of the patch size {config.patch_size}")

    def probe_module(self, tower: nn.Module) -> nn.Module | None:
        return tower.ln_post


register(ViTFamily())
