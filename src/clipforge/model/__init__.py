from clipforge.model.clip import CLIP
from clipforge.model.layers import QuickGELU, Transformer
from clipforge.model.resnet import AttentionPool2d, ModifiedResNet
from clipforge.model.text import TextTransformer
from clipforge.model.vit import VisionTransformer

__all__ = ["CLIP", "VisionTransformer", "ModifiedResNet", "AttentionPool2d", "TextTransformer", "Transformer", "QuickGELU"]
