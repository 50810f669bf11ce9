"""Small configs that train on a CPU: the parity fixtures' tiny models and the demo's."""

from __future__ import annotations

from clipforge.config import ModelConfig, TextConfig, VisionConfig
from clipforge.registry import register_model

# Small configs that train on a CPU. The demo configs use a short context: synthetic captions are short.
register_model(
    "tiny-vit",
    ModelConfig(64, VisionConfig(32, 2, 128, patch_size=8), TextConfig(width=128, layers=2)),
    "tiny ViT of the parity fixture: 32 px, patch 8, width 128, 2 layers",
)
register_model(
    "tiny-rn",
    ModelConfig(64, VisionConfig(64, (1, 1, 1, 1), 16, patch_size=None, kind="resnet"), TextConfig(width=64, layers=2)),
    "tiny ModifiedResNet of the parity fixture: 64 px, layers 1-1-1-1, width 16",
)
register_model(
    "demo-rn",
    ModelConfig(128, VisionConfig(64, (1, 1, 1, 1), 32, patch_size=None, kind="resnet"),
                TextConfig(context_length=32, vocab_size=2048, width=128, heads=2, layers=3)),
    "the demo model: ModifiedResNet 64 px, width 32; text width 128, 3 layers, context 32",
)
register_model(
    "demo-rn16",
    ModelConfig(128, VisionConfig(64, (1, 1, 1, 1), 16, patch_size=None, kind="resnet"),
                TextConfig(context_length=32, vocab_size=2048, width=64, heads=2, layers=2)),
    "the demo recipe's model: ModifiedResNet 64 px, width 16; text width 64, 2 layers, context 32",
)
register_model(
    "demo-vit",
    ModelConfig(128, VisionConfig(64, 4, 128, patch_size=8, heads=2),
                TextConfig(context_length=32, vocab_size=2048, width=128, heads=2, layers=3)),
    "a small ViT for CPU runs: 64 px, patch 8, width 128, 4 layers",
)

