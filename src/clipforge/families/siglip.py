"""The SigLIP families (Zhai et al. 2023; SigLIP 2, Tschannen et al. 2025): SigLIP's ViT with an
attention-pooling head, and its bidirectional text tower read out at the last position.

Both are held by transformers' ``SiglipModel`` (:mod:`clipforge.hf_siglip`). Checkpoints keep the image
tower under ``visual.`` and the text tower under ``text.``; a model of this family also has a learned
``logit_bias`` (``ModelConfig.init_logit_bias``).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from clipforge.config import PreprocessConfig, TextConfig, VisionConfig
from clipforge.families import Groups, State, TextFamily, VisionFamily, register
from clipforge.families.common import count_blocks, interpolate_grid
from clipforge.model.siglip import SigLIPTextTower, SigLIPVisionTower

# SigLIP's input pipeline (big_vision; transformers' SiglipImageProcessor): resize to the square (no
# crop), bicubic, pixels to [-1, 1]; RGB conversion first, as transformers' processors do it.
SIGLIP_PREPROCESS = PreprocessConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="squash", interpolation="bicubic",
                                     to_rgb="first_white")
ACT = "gelu_tanh"  # every released SigLIP / SigLIP 2 tower (HF: gelu_pytorch_tanh)


class SigLIPVisionFamily(VisionFamily):
    kind, title, hf_model = "siglip", "SigLIP ViT (MAP head)", "SiglipModel"
    # Zhai et al. 2023, "Stabilizing large-batch training": Adam's β2 = 0.95 instead of 0.999.
    adam = (0.95, 1e-8)
    preprocess = SIGLIP_PREPROCESS

    def build(self, config: VisionConfig, output_dim: int) -> nn.Module:
        if not isinstance(config.layers, int) or config.patch_size is None:
            raise ValueError(f"a SigLIP image tower needs an int vision.layers and a patch_size, got "
                             f"layers={config.layers!r}, patch_size={config.patch_size!r}")
        if output_dim != config.width:
            raise ValueError(f"SigLIP's image tower has no projection: embed_dim ({output_dim}) must equal "
                             f"vision.width ({config.width})")
        if config.image_size < config.patch_size:
            raise ValueError(f"image_size {config.image_size} is smaller than one patch ({config.patch_size})")
        return SigLIPVisionTower(config, self.default_heads(config))

    def default_heads(self, config: VisionConfig) -> int:
        return config.heads if config.heads is not None else default_heads(config.width)

    def layer_groups(self, tower: nn.Module) -> Groups:
        stem = [tower.conv1, tower.positional_embedding]
        return [stem, *[[block] for block in tower.transformer.resblocks], [tower.ln_post, tower.head]]

    def shard_units(self, tower: nn.Module) -> list[nn.Module]:
        return [*tower.transformer.resblocks, tower.head]

    def set_grad_checkpointing(self, tower: nn.Module, enable: bool) -> None:
        tower.transformer.grad_checkpointing = enable

    def describe(self, config: VisionConfig) -> str:
        return f"SigLIP ViT {config.layers}L w{config.width} /{config.patch_size}"

    def rows_per_item(self, config: VisionConfig, x: torch.Tensor) -> int:
        return (x.shape[-1] // config.patch_size) ** 2

    def matches(self, state: State) -> bool:
        return "visual.head.probe" in state

    def infer_config(self, state: State, act: str) -> VisionConfig:
        """``act`` is ignored: every released SigLIP uses GELU's tanh approximation."""
        width, _, patch, _ = state["visual.conv1.weight"].shape
        grid = round(state["visual.positional_embedding"].shape[0] ** 0.5)
        return VisionConfig(
            image_size=patch * grid, layers=count_blocks(state, "visual.transformer.resblocks."), width=width,
            patch_size=patch, heads=None, mlp_ratio=_ratio(state, "visual.head.mlp.c_fc.weight", width),
            act=ACT, kind=self.kind,
        )

    def resize_positions(self, state: State, config: VisionConfig, image_size: int) -> VisionConfig:
        """The grid is resized bicubically, as transformers' ``interpolate_pos_encoding`` does."""
        if image_size < config.patch_size:
            raise ValueError(f"image_size {image_size} is smaller than one patch ({config.patch_size})")
        key = "visual.positional_embedding"
        state[key] = interpolate_grid(state[key], image_size // config.patch_size, extra_tokens=0)
        return dataclasses.replace(config, image_size=image_size)


class SigLIPTextFamily(TextFamily):
    kind, title, hf_model = "siglip", "SigLIP text Transformer", "SiglipModel"
    # Bidirectional attention and the read-out at the last position: padding changes the output.
    trims_exactly = False

    def attach(self, clip: nn.Module, config: TextConfig, output_dim: int) -> None:
        clip.text = SigLIPTextTower(config, output_dim)

    def encode(self, clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        return clip.text(tokens)

    def tower_module(self, clip: nn.Module) -> nn.Module:
        return clip.text

    def layer_groups(self, tower: nn.Module) -> Groups:
        stem = [tower.token_embedding, tower.positional_embedding]
        return [stem, *[[block] for block in tower.transformer.resblocks], [tower.ln_final, tower.head]]

    def shard_units(self, tower: nn.Module) -> list[nn.Module]:
        return list(tower.transformer.resblocks)

    def set_grad_checkpointing(self, tower: nn.Module, enable: bool) -> None:
        tower.transformer.grad_checkpointing = enable

    def describe(self, config: TextConfig) -> str:
        return f"SigLIP text {config.layers}L w{config.width}"

    def rows_per_item(self, config: TextConfig, x: torch.Tensor) -> int:
        return x.shape[1]

    def matches(self, state: State) -> bool:
        return "text.head.weight" in state and "text.token_embedding.weight" in state

    def embed_dim(self, state: State) -> int:
        return state["text.head.weight"].shape[0]

    def infer_config(self, state: State, act: str) -> TextConfig:
        vocab, width = state["text.token_embedding.weight"].shape
        heads = default_heads(width)
        return TextConfig(
            context_length=state["text.positional_embedding"].shape[0], vocab_size=vocab, width=width,
            heads=None if heads == max(1, width // 64) else heads,
            layers=count_blocks(state, "text.transformer.resblocks."),
            mlp_ratio=_ratio(state, "text.transformer.resblocks.0.mlp.c_fc.weight", width), act=ACT, kind=self.kind,
        )


def default_heads(width: int) -> int:
    """Heads of 64 channels, except the shape-optimised So400m (width 1152), which has 16 of 72."""
    return 16 if width == 1152 else max(1, width // 64)


def _ratio(state: State, key: str, width: int) -> float:
    return mlp_ratio(width, state[key].shape[0])


def mlp_ratio(width: int, hidden: int) -> float:
    """A float ``r`` with ``int(width * r) == hidden`` (``hidden / width`` can round just below it)."""
    ratio = hidden / width
    while int(width * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


register(SigLIPVisionFamily())
register(SigLIPTextFamily())
