"""Pure metric functions: tensors/arrays in, numbers out; no models, files or randomness.

Definitions follow LAION's CLIP_benchmark where it defines the metric, so numbers agree:
- top-k accuracy: a sample counts when its label is among the ``k`` largest logits as chosen by
  ``torch.topk`` (so ties resolve as CLIP_benchmark's do on the same device); ``k`` larger than the
  number of classes gives NaN (CLIP_benchmark reports acc5 as NaN below five classes).
- mean per-class recall: the mean over the classes present in the targets of each class's recall
  of the top-1 predictions, i.e. scikit-learn's ``balanced_accuracy_score`` (which CLIP_benchmark
  calls); predictions of a class absent from the targets count as errors and add no class.
- retrieval Recall@k: per query 1 when at least one correct item is among the ``k`` best-scored
  items (``torch.topk``), else 0, averaged over queries; several positives per query allowed
  through a boolean ``positives`` matrix. ``k`` beyond the gallery size is clipped to it.
- multi-label average precision (CLIP_benchmark's ``average_precision_per_class``, after torchnet):
  per class, rank the samples by score (``torch.sort``, descending), average the precision at the
  rank of every positive; a class without positives gets 0 and still counts in the mean.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch


def _as_long(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).long().reshape(-1)


def topk_accuracy(logits: torch.Tensor, targets, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Logits [N, C], integer targets [N] → {k: fraction of samples whose label is in the top k}."""
    logits, targets = torch.as_tensor(logits), _as_long(targets)
    if logits.ndim != 2 or logits.shape[0] != targets.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)}")
    num_classes = logits.shape[1]
    valid = [k for k in ks if k <= num_classes]
    result = {k: float("nan") for k in ks}
    if not valid or len(targets) == 0:
        return result
    top = logits.topk(max(valid), dim=1, largest=True, sorted=True).indices  # [N, kmax]
    hit = top == targets[:, None]  # [N, kmax]
    for k in valid:  # a count over n in float64, as CLIP_benchmark divides
        result[k] = int(hit[:, :k].any(dim=1).sum().item()) / len(targets)
    return result


def accuracy(predictions, targets) -> float:
    """Fraction of equal entries of two label vectors [N]."""
    predictions, targets = _as_long(predictions), _as_long(targets)
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ")
    return int((predictions == targets).sum().item()) / len(targets) if len(targets) else float("nan")


def per_class_recall(predictions, targets, num_classes: int) -> np.ndarray:
    """Recall of each class [C] (NaN for classes without samples)."""
    cm = confusion_matrix(predictions, targets, num_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def mean_per_class_recall(predictions, targets) -> float:
    """Balanced accuracy: mean recall over the classes present in ``targets`` (sklearn's definition)."""
    predictions, targets = _as_long(predictions), _as_long(targets)
    if len(targets) == 0:
        return float("nan")
    num_classes = int(max(predictions.max().item(), targets.max().item())) + 1
    recalls = per_class_recall(predictions, targets, num_classes)
    return float(np.nanmean(recalls))


def confusion_matrix(predictions, targets, num_classes: int) -> np.ndarray:
    """Counts [C, C]: row = true class, column = predicted class."""
    predictions, targets = _as_long(predictions).numpy(), _as_long(targets).numpy()
    if len(targets) and (min(predictions.min(), targets.min()) < 0 or max(predictions.max(), targets.max()) >= num_classes):
        raise ValueError(f"labels outside [0, {num_classes})")
    return np.bincount(targets * num_classes + predictions, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, k: int) -> torch.Tensor:
    """Scores [Q, G] and a boolean positives matrix [Q, G] → hits [Q] (bool): a positive in the top k."""
    if scores.shape != positives.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and positives {tuple(positives.shape)} differ")
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1, largest=True, sorted=True).indices  # [Q, k]
    return positives.gather(1, top).any(dim=1)


def positives_from_index(text_to_image: Sequence[int], num_images: int) -> torch.Tensor:
    """Boolean matrix [T, I]: text t is a caption of image ``text_to_image[t]``."""
    index = _as_long(text_to_image)
    positives = torch.zeros(len(index), num_images, dtype=torch.bool)
    positives[torch.arange(len(index)), index] = True
    return positives


def retrieval_recalls(
    image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Normalized image [I, D] and text [T, D] features → Recall@k both ways.

    ``text_to_image_R@k``: each caption queries the images (CLIP_benchmark's
    ``image_retrieval_recall@k``); ``image_to_text_R@k``: each image queries the captions, a hit when
    any of its captions is in the top k (CLIP_benchmark's ``text_retrieval_recall@k``).
    """
    scores = text_features.float() @ image_features.float().t()  # [T, I]
    positives = positives_from_index(text_to_image, image_features.shape[0])
    out = {}
    for k in ks:
        out[f"text_to_image_R@{k}"] = recall_at_k(scores, positives, k).double().mean().item()
        out[f"image_to_text_R@{k}"] = recall_at_k(scores.t(), positives.t(), k).double().mean().item()
    return out


def average_precision_per_class(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Scores [N, C] and 0/1 targets [N, C] → average precision of each class [C] (float32).

    Precision at rank r is (positives among the first r) / r; a class's AP is the sum of the
    precisions at its positives' ranks over max(positives, 1).
    """
    scores, targets = torch.as_tensor(scores).float(), torch.as_tensor(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must be equal [N, C]")
    ranks = torch.arange(1, scores.shape[0] + 1, dtype=torch.float32)  # [N]
    ap = torch.zeros(scores.shape[1])
    for c in range(scores.shape[1]):
        order = torch.sort(scores[:, c], 0, True).indices  # descending, as CLIP_benchmark sorts
        truth = targets[order, c]
        precision = truth.float().cumsum(0) / ranks  # [N]
        ap[c] = precision[truth.bool()].sum() / max(float(truth.sum()), 1.0)
    return ap


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """The mean over all classes of :func:`average_precision_per_class` (CLIP_benchmark's mAP)."""
    return float(average_precision_per_class(scores, targets).mean().item())


# ---- robustness -------------------------------------------------------------------------------


def logit(p, eps: float = 1e-4) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [eps, 1 - eps] (Taori et al. 2020 plot accuracies this way)."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p / (1 - p))


def sigmoid(x) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def fit_logit_line(id_accuracy: Sequence[float], shifted_accuracy: Sequence[float]) -> tuple[float, float]:
    """Least-squares line logit(shifted) = slope · logit(id) + intercept over baseline classifiers."""
    x, y = logit(id_accuracy), logit(shifted_accuracy)
    if len(x) < 2 or np.ptp(x) < 1e-9:
        raise ValueError("a line needs at least two baselines with different in-distribution accuracy")
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def effective_robustness(id_accuracy: float, shifted_accuracy: float, line: tuple[float, float] | None) -> float:
    """Shifted accuracy minus what the baseline line predicts from the in-distribution accuracy.

    ``line=None`` uses y = x (no drop expected), so the value is ``shifted - id``.
    """
    if line is None:
        return float(shifted_accuracy - id_accuracy)
    slope, intercept = line
    return float(shifted_accuracy - sigmoid(slope * logit(id_accuracy) + intercept))


# ---- few-shot and overlap ---------------------------------------------------------------------


def shots_matching(shots: Sequence[int], accuracies: Sequence[float], target: float) -> dict[str, float | str | None]:
    """How many labelled examples per class a k-shot curve needs to reach ``target`` accuracy.

    Linear interpolation in log2(k) at the first point where the curve reaches the target.
    Returns ``{"shots": k or None, "bound": None | "below" | "above"}``: "below" when the target is
    under the smallest k's accuracy (worth fewer shots than measured), "above" when never reached.
    """
    ks, acc = np.asarray(shots, dtype=np.float64), np.asarray(accuracies, dtype=np.float64)
    order = np.argsort(ks)
    ks, acc = ks[order], acc[order]
    if target <= acc[0]:
        return {"shots": None, "bound": "below"}
    for i in range(1, len(ks)):
        if acc[i] >= target:
            lo, hi = math.log2(ks[i - 1]), math.log2(ks[i])
            frac = (target - acc[i - 1]) / (acc[i] - acc[i - 1])
            return {"shots": float(2 ** (lo + frac * (hi - lo))), "bound": None}
    return {"shots": None, "bound": "above"}


def threshold_at_recall(positive_scores, negative_scores, recall: float = 0.95) -> dict[str, float]:
    """The largest threshold t with P(positive ≥ t) ≥ ``recall``, and the rates it gives.

    Returns ``{"threshold", "recall", "false_positive_rate"}`` (scores ≥ t are flagged).
    """
    pos = np.sort(np.asarray(positive_scores, dtype=np.float64))[::-1]
    neg = np.asarray(negative_scores, dtype=np.float64)
    if len(pos) == 0 or not 0 < recall <= 1:
        raise ValueError("need positive scores and a recall in (0, 1]")
    needed = max(1, math.ceil(recall * len(pos) - 1e-9))
    threshold = float(pos[needed - 1])
    return {
        "threshold": threshold,
        "recall": float(np.mean(pos >= threshold)),
        "false_positive_rate": float(np.mean(neg >= threshold)) if len(neg) else float("nan"),
    }
