"""The causal text family: OpenAI's GPT-2-style text Transformer, read out at the end-of-text token."""

from __future__ import annotations

import torch
from torch import nn

from clipforge.config import TextConfig
from clipforge.families import Groups, State, TextFamily, register
from clipforge.families.common import count_blocks
from clipforge.model import text as causal


class CausalTextFamily(TextFamily):
    kind, title, hf_model = "causal", "causal Transformer", "CLIPModel"
    # Causal attention and the read-out at the end-of-text token: positions after a batch's longest
    # caption cannot change any output, so cutting them is exact (clipforge.fastpath.trim_tokens).
    trims_exactly = True

    def attach(self, clip: nn.Module, config: TextConfig, output_dim: int) -> None:
        causal.build_text(clip, config, output_dim)  # OpenAI's checkpoints keep these at the top level

    def encode(self, clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        return causal.encode_text(clip, tokens)

    def layer_groups(self, tower: nn.Module) -> Groups:
        stem = [tower.token_embedding, tower.positional_embedding]
        return [stem, *[[block] for block in tower.transformer.resblocks], [tower.ln_final, tower.text_projection]]

    def shard_units(self, tower: nn.Module) -> list[nn.Module]:
        return list(tower.transformer.resblocks)

    def set_grad_checkpointing(self, tower: nn.Module, enable: bool) -> None:
        tower.transformer.grad_checkpointing = enable

    def describe(self, config: TextConfig) -> str:
        return f"causal text {config.layers}L w{config.width}"

    def rows_per_item(self, config: TextConfig, x: torch.Tensor) -> int:
        return x.shape[1]

    def matches(self, state: State) -> bool:
        return "text_projection" in state and "token_embedding.weight" in state

    def embed_dim(self, state: State) -> int:
        return state["text_projection"].shape[1]

    def infer_config(self, state: State, act: str) -> TextConfig:
        width = state["ln_final.weight"].shape[0]
        return TextConfig(
            context_length=state["positional_embedding"].shape[0], vocab_size=state["token_embedding.weight"].shape[0],
            width=width, layers=count_blocks(state, "transformer.resblocks."),
            mlp_ratio=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width, act=act, kind=self.kind,
        )


register(CausalTextFamily())
