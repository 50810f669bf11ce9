"""Few-shot linear probes against zero-shot (the paper's Figures 6 and 7).

Protocol (stated in every report): for each k in ``shots`` and each seed, draw k examples of every
class from the probe's training split (without replacement; a class with fewer than k examples
contributes all it has), fit the same L-BFGS logistic regression, and choose its C with the same
parametric binary search on the probe's validation split. That validation split is full size,
not k per class: at k = 1 nothing could be held out, and the paper tuned its probes on full
validation sets too, so the curve is an optimistic (oracle-C) estimate of k-shot accuracy. Test
accuracy is on the probe's test split; mean and standard deviation (ddof=0) over seeds.

Zero-shot's worth in shots: the k at which the mean curve first reaches zero-shot accuracy on
the same test split, interpolated linearly in log2 k (:func:`clipforge.eval.metrics.shots_matching`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from clipforge.eval.linear_probe import ProbeConfig, fit_logistic, search_c
from clipforge.eval.metrics import accuracy, shots_matching


@dataclass(frozen=True)
class FewShotConfig:
    shots: tuple[int, ...] = (1, 2, 4, 8, 16)
    seeds: int = 3

    def describe(self) -> dict:
        d = asdict(self)
        d["protocol"] = (
            "k examples per class drawn from the probe's training split per seed; C by the linear probe's "
            "binary search on the full validation split (oracle C); accuracy on the probe's test split"
        )
        return d


def sample_per_class(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of k random examples of every class (all of a class that has fewer)."""
    picks = [rng.permutation(np.flatnonzero(labels == c))[:k] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def few_shot_curve(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    config: FewShotConfig = FewShotConfig(),
    probe: ProbeConfig = ProbeConfig(),
    zero_shot_accuracy: float | None = None,
    progress: bool = False,
    desc: str = "few-shot",
) -> dict:
    """Accuracy against shots. Returns a JSON-ready dict plus "models": {(k, seed): estimator}."""
    from tqdm import tqdm

    if not config.shots or config.seeds < 1:
        raise ValueError("few-shot needs at least one k in shots and seeds >= 1")
    points, models = [], {}
    min_class = int(np.bincount(train_y).min()) if len(train_y) else 0
    bar = tqdm(total=len(config.shots) * config.seeds, desc=desc, unit="probe", disable=not progress, leave=False)
    for k in sorted(config.shots):
        accs, cs = [], []
        for seed in range(config.seeds):
            bar.update()
            rng = np.random.default_rng([probe.seed, k, seed])
            idx = sample_per_class(train_y, k, rng)
            c, _ = search_c(train_x[idx], train_y[idx], val_x, val_y, probe)
            model = fit_logistic(train_x[idx], train_y[idx], c, probe.max_iter)
            models[(k, seed)] = model
            accs.append(accuracy(model.predict(test_x), test_y))
            cs.append(c)
        points.append(
            {
                "shots": k,
                "accuracies": accs,
                "mean": float(np.mean(accs)),
                "std": float(np.std(accs)),
                "C": cs,
                "complete": bool(k <= min_class),  # every class had k examples
            }
        )
    bar.close()
    result = {"points": points, "protocol": config.describe(), "models": models}
    if zero_shot_accuracy is not None:
        result["zero_shot_accuracy"] = float(zero_shot_accuracy)
        result["zero_shot_worth"] = shots_matching(
            [p["shots"] for p in points], [p["mean"] for p in points], zero_shot_accuracy
        )
    return result
