"""Pure statistics of the paper's further analyses (Radford et al. 2021, §3.1.5, §3.3, §7).

Arrays in, numbers out: no models or files. The only randomness is the bootstrap's, drawn from an
explicit seed, so every interval is reproducible. Intervals are percentile bootstraps
(``scipy.stats.bootstrap``, ``method="percentile"``): the paper reports bootstrap intervals for its
robustness fits and its FairFace rates without naming the method, and the percentile interval is
the one that stays defined when a rate is 0 in every resample.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95


def bootstrap_interval(samples: Sequence[np.ndarray], statistic: Callable, *, paired: bool = False,
                       n_resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE,
                       seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic(*samples, axis=-1)`` (vectorized over resamples).

    Independent samples are resampled separately (``paired=False``: groups of people), paired
    ones together (``paired=True``: the same images under two label sets). None when a sample has
    fewer than two observations (no spread to resample).
    """
    from scipy.stats import bootstrap

    samples = [np.asarray(s, dtype=np.float64) for s in samples]
    if not samples or min(len(s) for s in samples) < 2:
        return None
    result = bootstrap(samples, statistic, paired=paired, vectorized=True, n_resamples=n_resamples,
                       confidence_level=confidence, method="percentile", axis=-1,
                       random_state=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return float(low), float(high)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _difference(high: np.ndarray, low: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(high, axis=axis) - np.mean(low, axis=axis)


def _paired_change(before: np.ndarray, after: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(after, axis=axis) - np.mean(before, axis=axis)


def rate_with_interval(hits: np.ndarray, seed: int = 0, **kwargs) -> dict:
    """A 0/1 indicator [N] → {"rate", "ci", "n"}: the share of ones and its bootstrap interval."""
    hits = np.asarray(hits, dtype=np.float64)
    return {"rate": float(hits.mean()) if len(hits) else float("nan"),
            "ci": bootstrap_interval([hits], _mean, seed=seed, **kwargs), "n": int(len(hits))}


def disparity(group_hits: dict[str, np.ndarray], seed: int = 0, **kwargs) -> dict:
    """Indicators per group → the rate of the group with the highest rate minus that of the group
    with the lowest, with a bootstrap interval of that difference (the two groups resampled
    separately; an interval that includes 0 shows no clear disparity), and the two groups.

    The pair is fixed by the observed rates: bootstrapping the spread max − min itself would
    be biased upwards (it can never fall below 0, so its interval need not contain the estimate).
    """
    names = [g for g, h in group_hits.items() if len(h)]
    if len(names) < 2:
        return {"difference": None, "ci": None, "highest": None, "lowest": None, "ratio": None}
    rates = {g: float(np.mean(group_hits[g])) for g in names}
    high, low = max(rates, key=rates.get), min(rates, key=rates.get)
    return {"difference": rates[high] - rates[low],
            "ci": bootstrap_interval([group_hits[high], group_hits[low]], _difference, seed=seed, **kwargs),
            "highest": high, "lowest": low, "ratio": rates[high] / rates[low] if rates[low] > 0 else None}


def paired_change(before: np.ndarray, after: np.ndarray, seed: int = 0, **kwargs) -> dict:
    """The change of a rate between two label sets over the same images, with a paired interval."""
    before, after = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if before.shape != after.shape:
        raise ValueError(f"paired indicators differ in shape: {before.shape} and {after.shape}")
    return {"before": float(before.mean()) if len(before) else float("nan"),
            "after": float(after.mean()) if len(after) else float("nan"),
            "change": float(after.mean() - before.mean()) if len(after) else float("nan"),
            "ci": bootstrap_interval([before, after], _paired_change, paired=True, seed=seed, **kwargs)}


def distribution(predictions: np.ndarray, num_labels: int) -> np.ndarray:
    """Top-1 predictions [N] → the share of each label [num_labels] (zeros when N = 0)."""
    counts = np.bincount(np.asarray(predictions, dtype=np.int64), minlength=num_labels)[:num_labels]
    return counts / max(len(predictions), 1)


def close_answer_rates(predictions: np.ndarray, labels: np.ndarray, close: Sequence[frozenset[int]]) -> dict:
    """The surveillance protocol's three outcomes (§7.2): exact (the true class), close (a class
    marked close to the true one: a sibling in the hierarchy or a marked near miss), wrong."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    exact = predictions == labels
    near = np.array([p in close[t] for p, t in zip(predictions.tolist(), labels.tolist())], dtype=bool) & ~exact
    n = max(len(labels), 1)
    return {"exact": float(exact.sum() / n), "close": float(near.sum() / n),
            "wrong": float((~exact & ~near).sum() / n), "n": int(len(labels))}


def subset_accuracy(logits: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> tuple[float, int]:
    """Top-1 accuracy when only ``classes`` are offered: logits [N, C] restricted to those columns,
    over the images whose label is one of them. Returns (accuracy, images)."""
    classes = np.asarray(classes, dtype=np.int64)
    rows = np.isin(labels, classes)
    if not rows.any():
        return float("nan"), 0
    chosen = classes[np.asarray(logits)[rows][:, classes].argmax(axis=1)]
    return float(np.mean(chosen == np.asarray(labels)[rows])), int(rows.sum())


def power_law_fit(compute: Sequence[float], error: Sequence[float]) -> dict:
    """Least squares of log10(error) on log10(compute) (the paper's Figure 9 trend).

    Returns slope, intercept (log10 units), r², and per point the fitted error and the residual
    log10(error) − fit. Needs two points with different compute, and every value positive.
    """
    x, y = np.asarray(compute, dtype=np.float64), np.asarray(error, dtype=np.float64)
    if len(x) < 2 or len(x) != len(y) or np.ptp(np.log10(np.maximum(x, 1e-300))) == 0:
        raise ValueError("a log-log fit needs at least two points with different compute")
    if (x <= 0).any() or (y <= 0).any():
        raise ValueError("a log-log fit needs positive compute and error (an error of 0 has no logarithm)")
    lx, ly = np.log10(x), np.log10(y)
    slope, intercept = np.polyfit(lx, ly, 1)
    fitted = slope * lx + intercept
    residuals = ly - fitted
    total = float(np.sum((ly - ly.mean()) ** 2))
    return {"slope": float(slope), "intercept": float(intercept),
            "r2": 1.0 - float(np.sum(residuals**2)) / total if total > 0 else None,
            "fitted_error": (10.0**fitted).tolist(), "residuals": residuals.tolist()}


def linear_fit(x: Sequence[float], y: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """y = slope · x + intercept by least squares, Pearson's r with its two-sided p-value, and a
    t-based interval for the slope (the paper's Figure 8 reports r, p and a slope interval)."""
    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError("a line needs at least two points with different x")
    fit = stats.linregress(x, y)
    out = {"slope": float(fit.slope), "intercept": float(fit.intercept), "n": int(len(x)),
           "pearson_r": None, "p_value": None, "slope_ci": None}
    if len(x) > 2 and np.ptp(y) > 0:
        half = stats.t.ppf(0.5 + confidence / 2, len(x) - 2) * fit.stderr
        out.update(pearson_r=float(fit.rvalue), p_value=float(fit.pvalue),
                   slope_ci=[float(fit.slope - half), float(fit.slope + half)])
    return out
