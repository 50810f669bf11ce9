"""The causal text Transformer (paper section 2.4; GPT-2 style, Radford et al. 2019).

OpenAI's checkpoints keep the text tower's parameters at the top level of the CLIP module
(``token_embedding``, ``transformer.*``, ``ln_final``, ``text_projection``), so the tower is a mixin:
``CLIP`` and the stand-alone ``TextTransformer`` both build it into themselves.
"""

from __future__ import annotations

import torch
from torch import nn

from clipforge.config import TextConfig
from clipforge.model.layers import Transformer
from clipforge.model.pieces import run_in_pieces


class TextTower:
    """Builds the text tower's parameters into an ``nn.Module`` and encodes token ids with them."""

    token_embedding: nn.Embedding
    positional_embedding: nn.Parameter
    transformer: Transformer
    ln_final: nn.LayerNorm
    text_projection: nn.Parameter
    # CPU inference without autograd (clipforge.model.pieces): token rows per piece (None: one piece),
    # pieces run at once (None: one per intra-op thread, each on one thread; 1: one after another).
    inference_chunk_rows: int | None = 1024
    inference_streams: int | None = None

    def _build_text(self, cfg: TextConfig, output_dim: int) -> None:
        self.context_length, self.vocab_size = cfg.context_length, cfg.vocab_size
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.num_heads, cfg.mlp_ratio, cfg.act, causal=True)
        self.ln_final = nn.LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, output_dim))
        self._init_text()

    def _init_text(self) -> None:
        """Standard deviations from OpenAI's CLIP.initialize_parameters."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer.init_openai()
        nn.init.normal_(self.text_projection, std=self.transformer.width**-0.5)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids [N, L] (L ≤ context_length) → projected, unnormalized features [N, embed_dim].

        The sequence is read out at the end-of-text token, which has the largest id in the
        vocabulary, so ``argmax`` over the ids finds it.
        """
        if tokens.dim() != 2 or tokens.is_floating_point():
            raise ValueError(f"tokens must be integer ids of shape [N, L], got {tokens.dtype} {list(tokens.shape)}")
        length = tokens.shape[1]
        if length > self.context_length:
            raise ValueError(f"token sequences of length {length} exceed the context length {self.context_length}")
        return run_in_pieces(self, self._encode_text, tokens, tokens=length)

    def _encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:length]  # [N, L, W]
        x = self.transformer(x, index=tokens.argmax(dim=-1))  # the end-of-text token's output, [N, W]
        return self.ln_final(x) @ self.text_projection


class TextTransformer(TextTower, nn.Module):
    """The text tower on its own (e.g. for a text-only export)."""

    def __init__(self, cfg: TextConfig, output_dim: int):
        nn.Module.__init__(self)
        self._build_text(cfg, output_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encode_text(tokens)
