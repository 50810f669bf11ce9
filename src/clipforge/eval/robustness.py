"""Robustness to distribution shift: one label space, several test sets, effective robustness.

Effective robustness (Taori et al. 2020; the CLIP paper, section 3.3) is accuracy under shift
above what a baseline trend predicts from in-distribution accuracy, the trend being a line fitted
to logit-transformed (in-distribution, shifted) accuracies of baseline classifiers. The classic
trend uses many ImageNet-trained models; with one model we build the baselines from the same
frozen features: linear probes trained on in-distribution data (the few-shot probes at every k
and seed, plus the full probe), i.e. classifiers *adapted* to the in-distribution set, the
comparison of the paper's Figure 14. The zero-shot classifier's effective robustness is its
shifted accuracy minus the trend's prediction at its in-distribution accuracy. With fewer than two
baselines of different in-distribution accuracy the trend is y = x (effective robustness = shifted
− in-distribution accuracy), and the report says so.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from clipforge.eval.metrics import effective_robustness, fit_logit_line

DEFINITION = (
    "effective robustness = shifted accuracy - sigmoid(a*logit(in-distribution accuracy) + b), the line "
    "fitted by least squares on logit accuracies of baseline linear probes trained on in-distribution "
    "features (few-shot probes at every k and seed, and the full probe); y = x when under two baselines"
)


def _trend(baselines: Sequence[Mapping[str, float]], id_set: str, target: str) -> tuple[float, float] | None:
    xs = [b[id_set] for b in baselines]
    ys = [b[target] for b in baselines]
    try:
        return fit_logit_line(xs, ys)
    except ValueError:
        return None


def robustness_report(
    accuracies: Mapping[str, Mapping[str, float]],
    id_set: str,
    shifted_sets: Sequence[str],
    baselines: Sequence[str],
    subjects: Sequence[str],
) -> dict:
    """``accuracies[classifier][set]`` → effective robustness of each subject classifier.

    Every classifier needs an accuracy on ``id_set`` and on each shifted set. The "average" target
    is the mean accuracy over the shifted sets; a trend line is fitted for it and for each set.
    """
    if not shifted_sets:
        raise ValueError(f"robustness for {id_set!r} needs at least one shifted set")
    rows = {name: dict(acc) for name, acc in accuracies.items()}
    for name, acc in rows.items():
        missing = [s for s in (id_set, *shifted_sets) if s not in acc]
        if missing:
            raise ValueError(f"classifier {name!r} has no accuracy on {missing}")
        acc["average_shifted"] = float(np.mean([acc[s] for s in shifted_sets]))
    base_rows = [rows[b] for b in baselines if b in rows]
    targets = [*shifted_sets, "average_shifted"]
    lines = {t: _trend(base_rows, id_set, t) for t in targets}
    result = {
        "in_distribution": id_set,
        "shifted": list(shifted_sets),
        "definition": DEFINITION,
        "baselines": len(base_rows),
        "trend": {t: (None if line is None else {"slope": line[0], "intercept": line[1]}) for t, line in lines.items()},
        "classifiers": {},
    }
    for name in subjects:
        acc = rows[name]
        result["classifiers"][name] = {
            "in_distribution_accuracy": acc[id_set],
            "shifted_accuracy": {s: acc[s] for s in shifted_sets},
            "average_shifted_accuracy": acc["average_shifted"],
            "drop": acc[id_set] - acc["average_shifted"],
            "effective_robustness": {t: effective_robustness(acc[id_set], acc[t], lines[t]) for t in targets},
        }
    result["points"] = {name: {"id": rows[name][id_set], "shifted": rows[name]["average_shifted"]} for name in rows}
    return result
