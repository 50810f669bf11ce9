"""Reduced-size copies of registered architectures: the same options (head counts, patch size, MLP ratio,
activation, block structure), 4-wide heads, 2 layers, a 64-token vocabulary, a 2-3 patch grid.

``tests/fixtures/make_openclip_fixtures.py`` reduces open_clip's configs by the same rule, so a reduced
registered config equals the reduced open_clip one exactly when the full-size ones agree.
"""

from __future__ import annotations

import dataclasses

from clipforge.config import ModelConfig, TextConfig, VisionConfig

HEAD_WIDTH, LAYERS, VOCAB, CONTEXT, EMBED = 4, 2, 64, 12, 16


def reduced_vision(vision: VisionConfig) -> VisionConfig | None:
    if vision.kind == "vit":
        patch = vision.patch_size
        return dataclasses.replace(vision, image_size=patch * (2 if patch >= 32 else 3), layers=LAYERS,
                                   width=vision.num_heads * HEAD_WIDTH, heads=vision.num_heads)
    if vision.kind == "resnet":  # one block per stage; 8 channels; the attention pool keeps OpenAI's head rule
        return dataclasses.replace(vision, image_size=64, layers=(1, 1, 1, 1), width=8, heads=None)
    return None


def reduced_text(text: TextConfig) -> TextConfig | None:
    if text.kind != "causal":
        return None
    return dataclasses.replace(text, context_length=CONTEXT, vocab_size=VOCAB, width=text.num_heads * HEAD_WIDTH,
                               heads=text.num_heads, layers=LAYERS)


def reduced(config: ModelConfig) -> ModelConfig | None:
    """The reduced copy of ``config`` (default preprocessing), or None for a family without a rule here."""
    vision, text = reduced_vision(config.vision), reduced_text(config.text)
    if vision is None or text is None:
        return None
    return ModelConfig(EMBED, vision, text, init_logit_scale=config.init_logit_scale)
