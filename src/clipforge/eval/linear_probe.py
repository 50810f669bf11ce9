"""Linear probe, the paper's protocol (Radford et al. 2021, Appendix A.3).

Frozen image features; scikit-learn's L-BFGS logistic regression (``max_iter=1000``); the inverse
L2 strength C chosen on a validation split held out from the training split by the paper's
parametric binary search: evaluate C ∈ {1e-6, 1e-4, 1e-2, 1, 1e2, 1e4, 1e6}, then repeatedly halve
the step (in decades) and evaluate the two neighbours of the best C so far, until the step is one
eighth of a decade (the resolution of the paper's 96-step sweep over 1e-6..1e6). Ties in validation
accuracy go to the smaller C (stronger regularization). Then refit on train + validation with
the chosen C and report test accuracy. The features are the ViT's pre-projection class token,
as the paper used (the projected embedding for ResNets, whose attention pool ends in its own
projection).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from clipforge.eval.metrics import accuracy, mean_per_class_recall

PAPER_C_START = (1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6)


@dataclass(frozen=True)
class ProbeConfig:
    c_start: tuple[float, ...] = PAPER_C_START  # evenly spaced in log10
    steps_per_decade: int = 8  # final resolution of the search
    max_iter: int = 1000
    val_fraction: float = 0.2  # of the training split, per class, held out to choose C
    test_fraction: float = 0.5  # per class, when a set has no separate train/test folders
    features: str = "pre_projection"  # or "embedding" (encode_image outputs)
    seed: int = 0

    def describe(self) -> dict:
        d = asdict(self)
        d["search"] = (
            "parametric binary search: evaluate c_start, then halve the log10 step around the best C "
            f"until 1/{self.steps_per_decade} decade; ties go to the smaller C; refit on train+val"
        )
        return d


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out): ``round(fraction · n_c)`` of each class held out, at least one
    kept and (when the class has two or more samples and fraction > 0) at least one held out."""
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_held = int(round(fraction * len(idx)))
        if fraction > 0 and len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        else:
            n_held = 0
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float, max_iter: int = 1000):
    """L-BFGS multinomial logistic regression; returns the fitted sklearn estimator."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    if len(np.unique(y)) < 2:
        return _Constant(int(y[0]))
    model = LogisticRegression(C=c, max_iter=max_iter, solver="lbfgs")
    # One BLAS thread: these problems are small, and threaded BLAS on them runs ~20x slower on a
    # busy machine (thread start-up and contention dominate each L-BFGS iteration).
    with warnings.catch_warnings(), _blas_controller().limit(limits=1, user_api="blas"):
        # The paper caps L-BFGS at 1000 iterations; an unconverged fit at a huge C is part of the sweep.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    return model


@functools.lru_cache(maxsize=1)
def _blas_controller():
    """Scanning the loaded libraries is the slow part of threadpoolctl: do it once."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


class _Constant:
    """A one-class training set (possible at 1 shot with few classes): always predict that class."""

    def __init__(self, label: int):
        self.label = label

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), self.label, dtype=np.int64)


def search_c(train_x, train_y, val_x, val_y, config: ProbeConfig = ProbeConfig()) -> tuple[float, list[dict]]:
    """The paper's parametric binary search for C. Returns (best C, [{"C", "val_accuracy"}] in order)."""
    scores: dict[float, float] = {}  # log10 C → validation accuracy
    trace = []

    def evaluate(log_c: float) -> None:
        log_c = round(log_c, 6)
        if log_c in scores:
            return
        model = fit_logistic(train_x, train_y, 10.0**log_c, config.max_iter)
        scores[log_c] = accuracy(model.predict(val_x), val_y)
        trace.append({"C": 10.0**log_c, "val_accuracy": scores[log_c]})

    logs = [math.log10(c) for c in config.c_start]
    lo, hi = min(logs), max(logs)
    for log_c in logs:
        evaluate(log_c)
    step = (hi - lo) / max(len(logs) - 1, 1)
    best = _best(scores)
    while step > 1.0 / config.steps_per_decade + 1e-9:
        step /= 2
        for candidate in (best - step, best + step):
            if lo - 1e-9 <= candidate <= hi + 1e-9:
                evaluate(candidate)
        best = _best(scores)
    return 10.0**best, trace


def _best(scores: dict[float, float]) -> float:
    return max(scores, key=lambda log_c: (scores[log_c], -log_c))


def top5_accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    """Top-5 accuracy from the probe's class probabilities (NaN under five classes, as CLIP_benchmark)."""
    import torch

    from clipforge.eval.metrics import topk_accuracy

    classes = getattr(model, "classes_", None)
    num_classes = int(max(np.max(y), np.max(classes) if classes is not None else 0)) + 1
    if classes is None or num_classes < 5:
        return float("nan")
    scores = np.full((len(x), num_classes), -np.inf)
    scores[:, classes] = model.predict_proba(x)  # classes absent from training can never be chosen
    return topk_accuracy(torch.from_numpy(scores), y, (5,))[5]


def linear_probe(train_x, train_y, val_x, val_y, test_x, test_y, config: ProbeConfig = ProbeConfig()) -> dict:
    """Choose C on (train, val), refit on train+val, evaluate on test.

    Returns {"test_accuracy", "test_mean_per_class_recall", "C", "search", sizes, "model"}; the fitted
    estimator under "model" (not JSON) lets the caller score other sets with the same classifier.
    """
    best_c, trace = search_c(train_x, train_y, val_x, val_y, config)
    model = fit_logistic(np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y]), best_c, config.max_iter)
    predictions = model.predict(test_x)
    return {
        "test_accuracy": accuracy(predictions, test_y),
        "test_top5_accuracy": top5_accuracy(model, test_x, test_y),
        "test_mean_per_class_recall": mean_per_class_recall(predictions, test_y),
        "C": best_c,
        "search": trace,
        "n_train": int(len(train_y)),
        "n_val": int(len(val_y)),
        "n_test": int(len(test_y)),
        "model": model,
    }
