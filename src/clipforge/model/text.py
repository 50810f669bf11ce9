"""The causal text Transformer (paper section 2.4; GPT-2 style, Radford et al. 2019).

OpenAI's checkpoints keep the text tower's parameters at the top level of the CLIP module
(``token_embedding``, ``transformer.*``, ``ln_final``, ``text_projection``), so the tower is built
into whichever module holds it: ``CLIP`` itself, or the stand-alone ``TextTransformer``.
"""

from __future__ import annotations

import torch
from torch import nn

from clipforge.config import TextConfig
from clipforge.model.layers import Transformer


def build_text(holder: nn.Module, cfg: TextConfig, output_dim: int) -> None:
    """Register the text tower's parameters on ``holder``, initialised as OpenAI's (CLIP.initialize_parameters)."""
    holder.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
    holder.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
    holder.transformer = Transformer(cfg.width, cfg.layers, cfg.num_heads, cfg.mlp_ratio, cfg.act, causal=True)
    holder.ln_final = nn.LayerNorm(cfg.width)
    holder.text_projection = nn.Parameter(torch.empty(cfg.width, output_dim))
    nn.init.normal_(holder.token_embedding.weight, std=0.02)
    nn.init.normal_(holder.positional_embedding, std=0.01)
    holder.transformer.init_openai()
    nn.init.normal_(holder.text_projection, std=cfg.width**-0.5)


def encode_text(holder: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Token ids [N, L] (L ≤ context_length) → projected, unnormalized features [N, embed_dim].

    The sequence is read out at the end-of-text token, which has the largest id in the vocabulary,
    so ``argmax`` over the ids finds it.
    """
    length = tokens.shape[1]
    x = holder.token_embedding(tokens) + holder.positional_embedding[:length]  # [N, L, W]
    x = holder.transformer(x, index=tokens.argmax(dim=-1))  # the end-of-text token's output, [N, W]
    return holder.ln_final(x) @ holder.text_projection


class TextTransformer(nn.Module):
    """The text tower on its own (e.g. for a text-only export)."""

    def __init__(self, cfg: TextConfig, output_dim: int):
        super().__init__()
        self.context_length, self.vocab_size = cfg.context_length, cfg.vocab_size
        build_text(self, cfg, output_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return encode_text(self, tokens)
