"""Zero-shot classification, scored as LAION's CLIP_benchmark scores it.

Matching CLIP_benchmark (``clip_benchmark/metrics/zeroshot_classification.py``) point by point:
- head: each prompt embedding normalized, averaged per class, renormalized (:mod:`clipforge.zeroshot`);
- logits: 100 · normalized image features · head, in float32 (the scale changes no ranking);
- ``acc1`` / ``acc5``: top-k by ``torch.topk`` (:func:`~clipforge.eval.metrics.topk_accuracy`);
  ``acc5`` is NaN with fewer than five classes, as there;
- ``mean_per_class_recall``: balanced accuracy of ``argmax`` predictions;
- multi-label sets (``.npy`` targets [N, C]): ``mean_average_precision`` over the 100 · cosine
  logits (:func:`~clipforge.eval.metrics.average_precision_per_class`), CLIP_benchmark's only metric
  for them;
- two-class sets also get ``roc_auc`` (the paper's metric for Hateful Memes): the area under the
  ROC curve of the softmax probability of class 1 (scikit-learn's ``roc_auc_score``).
Differences that cannot change a number beyond float rounding: prompts are encoded in batches of
many classes rather than one class at a time, and CLIP_benchmark's default fp16 autocast on GPU is
not applied (we compute in the model's dtype, float32 unless the caller casts it).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
import torch

from clipforge.eval.datasets import ClassificationSet, encode_images, load_classification_set
from clipforge.eval.metrics import average_precision_per_class, mean_per_class_recall, per_class_recall, topk_accuracy
from clipforge.zeroshot import Templates, build_classifier, load_templates, zero_shot_logits


def score_zero_shot(image_features: torch.Tensor, labels, classifier: torch.Tensor) -> tuple[dict, np.ndarray]:
    """Image features [N, D], labels [N], head [C, D] → (metrics, argmax predictions [N])."""
    logits = zero_shot_logits(image_features, classifier)  # [N, C]
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    top = topk_accuracy(logits, labels, (1, 5))
    predictions = logits.argmax(dim=1).numpy()
    metrics = {
        "acc1": top[1],
        "acc5": top[5],
        "mean_per_class_recall": mean_per_class_recall(predictions, labels),
        "per_class_recall": per_class_recall(predictions, labels, classifier.shape[0]).tolist(),
        "n": int(len(labels)),
        "num_classes": int(classifier.shape[0]),
    }
    if classifier.shape[0] == 2 and len(torch.unique(labels)) == 2:
        from sklearn.metrics import roc_auc_score

        metrics["roc_auc"] = float(roc_auc_score(labels.numpy(), logits.softmax(dim=1)[:, 1].numpy()))
    return metrics, predictions


def score_zero_shot_multilabel(image_features: torch.Tensor, targets, classifier: torch.Tensor) -> tuple[dict, np.ndarray]:
    """Image features [N, D], 0/1 targets [N, C], head [C, D] → (metrics, logits [N, C])."""
    logits = zero_shot_logits(image_features, classifier)  # [N, C]
    targets = torch.as_tensor(np.asarray(targets))
    if targets.shape != logits.shape:
        raise ValueError(f"multi-label targets {tuple(targets.shape)} do not match logits {tuple(logits.shape)}")
    ap = average_precision_per_class(logits, targets)
    metrics = {
        "mean_average_precision": float(ap.mean().item()),
        "average_precision_per_class": ap.tolist(),
        "n": int(targets.shape[0]),
        "num_classes": int(classifier.shape[0]),
        "multilabel": True,
    }
    return metrics, logits.numpy()


def _resolve_templates(templates: Templates | str | os.PathLike) -> Templates:
    if isinstance(templates, (str, os.PathLike)):
        return load_templates(templates)
    return templates


def zero_shot_accuracy(
    model: Any,
    tokenizer: Callable[..., torch.Tensor],
    data: str | os.PathLike | ClassificationSet | tuple[torch.Tensor, Sequence[int]],
    *,
    classnames: Sequence[str] | None = None,
    templates: Templates | str | os.PathLike = "synthetic",
    preprocess: Callable | None = None,
    batch_size: int = 256,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict:
    """A light zero-shot evaluation (for periodic checks during training).

    ``data`` is an ImageFolder-style directory or a :class:`ClassificationSet` (read with
    ``preprocess``, default the model's eval transform), or a tuple ``(tensor, labels)`` where the
    tensor holds preprocessed images [N, 3, S, S] or image features [N, D]; tuples need
    ``classnames``. Returns CLIP_benchmark's ``acc1``, ``acc5``, ``mean_per_class_recall`` and more.
    """
    if isinstance(data, (str, os.PathLike)):
        data = load_classification_set(data)
    if isinstance(data, ClassificationSet):
        if preprocess is None:
            from clipforge.transforms import preprocess_for

            preprocess = preprocess_for(model.config)
        encoded = encode_images(model, preprocess, data.paths, batch_size=batch_size, progress=progress)
        data = data.subset(encoded.kept) if encoded.kept is not None else data
        features, labels, classnames = encoded.embeddings, data.labels, classnames or data.classnames
    else:
        tensor, labels = data
        if classnames is None:
            raise ValueError("zero_shot_accuracy on (tensor, labels) needs classnames")
        features = tensor if tensor.ndim == 2 else _encode_tensor(model, tensor, batch_size)
    classifier = build_classifier(
        model, tokenizer, list(classnames), _resolve_templates(templates), batch_size=batch_size, cache_dir=cache_dir
    )
    metrics, _ = score_zero_shot(features, labels, classifier)
    return metrics


def _encode_tensor(model: Any, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    from clipforge.zeroshot import eval_mode, model_device

    device, out = model_device(model), []
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            out.append(model.encode_image(images[start : start + batch_size].to(device)).float().cpu())
    return torch.cat(out)
