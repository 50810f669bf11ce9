"""Zero-shot accuracy on a classification set every so many steps, through :mod:`clipforge.eval`.

The images are read and preprocessed once (a class-balanced subset of at most ``max_images``);
each evaluation then only encodes them and the class prompts.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from clipforge.train.config import EvalSection


class PeriodicEval:
    """``evaluate(model)`` → CLIP_benchmark's zero-shot metrics (``acc1``, ``mean_per_class_recall`` ...)."""

    def __init__(self, cfg: EvalSection, preprocess: Callable, tokenizer: Callable[..., torch.Tensor]):
        from clipforge.eval import load_classification_set

        if not cfg.data:
            raise ValueError("eval.every > 0 needs eval.data: an ImageFolder-style classification set")
        self.cfg, self.tokenizer = cfg, tokenizer
        dataset = load_classification_set(cfg.data)
        keep = _balanced_subset(dataset.labels, cfg.max_images)
        self.name, self.classnames = dataset.name, list(dataset.classnames)
        self.paths = [dataset.paths[i] for i in keep]
        self.labels = dataset.labels[keep]
        self.preprocess = preprocess
        self._images: torch.Tensor | None = None

    def images(self) -> torch.Tensor:
        """The preprocessed images [N, 3, S, S], read on first use."""
        if self._images is None:
            from PIL import Image

            tensors = []
            for path in self.paths:
                with Image.open(path) as image:
                    tensors.append(self.preprocess(image))
            self._images = torch.stack(tensors)
        return self._images

    def __call__(self, model: Any) -> dict[str, Any]:
        from clipforge.eval import zero_shot_accuracy

        metrics = zero_shot_accuracy(model, self.tokenizer, (self.images(), self.labels),
                                     classnames=self.classnames, templates=self.cfg.templates)
        return {"task": self.name, "acc1": metrics["acc1"], "mean_per_class_recall": metrics["mean_per_class_recall"],
                "n": metrics["n"], "chance": 1.0 / len(self.classnames)}


def _balanced_subset(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of at most ``limit`` samples, the same number per class where possible (sorted)."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    classes = np.unique(labels)
    per_class = max(1, limit // len(classes))
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in classes])
    return np.sort(keep)
