"""clipforge: CLIP, complete, faithful and fast.

    import clipforge
    model, preprocess, tokenizer = clipforge.load("ViT-B/32")   # or a checkpoint file / directory
    image_features = model.encode_image(preprocess(image).unsqueeze(0))
    text_features = model.encode_text(tokenizer(["a diagram", "a dog"]))
"""

__version__ = "0.1.0"

from clipforge import registry, zeroshot
from clipforge.api import load, save
from clipforge.checkpoint import CheckpointError
from clipforge.factory import create_model
from clipforge.fastpath import InferenceOptions, optimize_for_inference, trim_tokens
from clipforge.registry import available_models
from clipforge.tokenizer import Tokenizer, tokenize

__all__ = ["available_models", "create_model", "load", "save", "tokenize", "Tokenizer", "CheckpointError", "registry", "zeroshot",
           "InferenceOptions", "optimize_for_inference", "trim_tokens"]
