"""A loaded model as one object: images and texts in, L2-normalized float32 vectors out.

Embedding jobs, the search command and the HTTP service all go through :class:`Encoder`, so every
vector in an index and every query vector comes from the same preprocessing and normalization.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DEFAULT_TEMPLATES = ("a photo of a {}.",)


class Encoder:
    """``model`` (a CLIP), ``preprocess`` (PIL → [3, S, S]), ``tokenizer`` (texts → LongTensor [N, L]).

    Thread-safe for concurrent calls: inference runs without autograd and mutates no state.
    """

    def __init__(self, model: Any, preprocess: Callable[[Image.Image], torch.Tensor], tokenizer: Any,
                 name: str = "model", batch_size: int = 64):
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self._fingerprint: str | None = None

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", batch_size: int = 64) -> "Encoder":
        """Any checkpoint ``clipforge.load`` reads (our directory format carries its tokenizer)."""
        from clipforge.api import load

        from clipforge.fastpath import optimize_for_inference

        model, preprocess, tokenizer = load(path, device=device)
        if tokenizer is None:
            raise ValueError(f"{path}: no tokenizer is saved with this model and OpenAI's vocabulary is not available")
        encoder = cls(model, preprocess, tokenizer, name=str(Path(path).resolve()), batch_size=batch_size)
        encoder.fingerprint()  # of the weights as saved (folding BatchNorm into convolutions renames them)
        encoder.model = optimize_for_inference(model, inplace=True)
        return encoder

    @property
    def dim(self) -> int:
        return int(self.model.config.embed_dim)

    @property
    def image_size(self) -> int:
        return int(self.model.image_size)

    @property
    def context_length(self) -> int:
        return int(self.model.config.text.context_length)

    def fingerprint(self) -> str:
        """SHA-256 of the weights (names, dtypes, shapes, bytes): vectors of two encoders mix only if equal."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for key, tensor in sorted(self.model.state_dict().items()):
                t = tensor.detach().cpu().contiguous()
                digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
                digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images (any mode) → float32 [N, D], rows of unit norm."""
        return self.encode_pixels([self.preprocess(im) for im in images])

    def encode_pixels(self, pixels: Sequence[torch.Tensor]) -> np.ndarray:
        """Preprocessed images, each [3, S, S] (``self.preprocess``'s output) → float32 [N, D], unit rows."""
        out = []
        for start in range(0, len(pixels), self.batch_size):
            batch = torch.stack(list(pixels[start : start + self.batch_size]))  # [B, 3, S, S]
            with torch.inference_mode():
                features = self.model.encode_image(batch.to(self.device))  # [B, D]
            out.append(F.normalize(features.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts → float32 [N, D], rows of unit norm (long texts are truncated to the context length)."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start : start + self.batch_size]), context_length=self.context_length)
            with torch.inference_mode():
                features = self.model.encode_text(tokens.to(self.device))  # [B, D]
            out.append(F.normalize(features.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def classify(self, image_vectors: np.ndarray, labels: Sequence[str],
                 templates: Sequence[str] = DEFAULT_TEMPLATES) -> tuple[np.ndarray, np.ndarray]:
        """Zero-shot: unit image vectors [N, D] and labels → (probabilities [N, C], cosine similarities [N, C]).

        Class embeddings average the normalized prompt embeddings (paper section 3.1.4); probabilities
        are what the model was trained to predict (``CLIP.probabilities``): the softmax of
        exp(logit_scale) · cosine, as OpenAI's ``logits_per_image.softmax(-1)``, or for a SigLIP model
        one sigmoid per label, σ(exp(logit_scale) · cosine + logit_bias).
        """
        from clipforge.zeroshot import build_classifier

        with torch.inference_mode():
            head = build_classifier(self.model, self.tokenizer, list(labels), list(templates))  # [C, D]
            cosine = torch.from_numpy(np.ascontiguousarray(image_vectors, dtype=np.float32)) @ head.float().t()
            probs = self.model.probabilities(cosine.to(self.device)).float().cpu()  # [N, C]
        return probs.numpy(), cosine.numpy()


__all__ = ["DEFAULT_TEMPLATES", "Encoder"]
