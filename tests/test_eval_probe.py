"""Linear probe (the paper's C search), few-shot curves and effective robustness on known data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from clipforge.eval.few_shot import FewShotConfig, few_shot_curve, sample_per_class
from clipforge.eval.linear_probe import ProbeConfig, linear_probe, search_c, stratified_split
from clipforge.eval.robustness import robustness_report


def blobs(n_per_class: int, classes: int = 4, dim: int = 16, spread: float = 1.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 2
    y = np.repeat(np.arange(classes), n_per_class)
    return centres[y] + spread * rng.normal(size=(len(y), dim)), y


def test_stratified_split_is_per_class_disjoint_and_seeded():
    y = np.repeat(np.arange(3), [10, 5, 2])
    kept, held = stratified_split(y, 0.2, seed=0)
    assert set(kept).isdisjoint(held) and len(kept) + len(held) == len(y)
    assert np.bincount(y[held]).tolist() == [2, 1, 1]  # round(0.2·n), at least one of each class
    assert np.array_equal(held, stratified_split(y, 0.2, seed=0)[1])
    assert not np.array_equal(stratified_split(y, 0.5, seed=1)[1], stratified_split(y, 0.5, seed=2)[1])


def test_search_follows_the_papers_binary_search():
    x, y = blobs(40)
    train, val = stratified_split(y, 0.3, seed=0)
    best, trace = search_c(x[train], y[train], x[val], y[val], ProbeConfig())
    logs = [round(math.log10(t["C"]), 6) for t in trace]
    assert logs[:7] == [-6, -4, -2, 0, 2, 4, 6]  # the paper's starting grid
    assert len(trace) <= 7 + 2 * 4  # four halvings (2 → 1 → 0.5 → 0.25 → 0.125 decades), two points each
    steps = np.diff(sorted(set(logs)))
    assert steps.min() == pytest.approx(0.125)  # the final resolution: 8 steps per decade
    best_log = math.log10(best)
    scores = {round(math.log10(t["C"]), 6): t["val_accuracy"] for t in trace}
    assert scores[round(best_log, 6)] == max(scores.values())
    for neighbour in (best_log - 0.125, best_log + 0.125):  # the peak was refined to 1/8 decade
        assert round(neighbour, 6) in scores or not -6 <= neighbour <= 6


def test_ties_go_to_the_smaller_c():
    x, y = blobs(30, spread=0.05)  # separable: most C values reach 100% on validation
    train, val = stratified_split(y, 0.3, seed=0)
    best, trace = search_c(x[train], y[train], x[val], y[val])
    perfect = [t["C"] for t in trace if t["val_accuracy"] == 1.0]
    assert best == min(perfect)


def test_linear_probe_refits_on_train_and_val_with_the_chosen_c():
    x, y = blobs(50, seed=1)
    pool, test = stratified_split(y, 0.5, seed=0)
    train, val = stratified_split(y[pool], 0.2, seed=1)
    xp, yp = x[pool], y[pool]
    result = linear_probe(xp[train], yp[train], xp[val], yp[val], x[test], y[test])
    reference = LogisticRegression(C=result["C"], max_iter=1000).fit(xp, yp)
    assert np.array_equal(result["model"].predict(x[test]), reference.predict(x[test]))
    assert result["test_accuracy"] == pytest.approx(reference.score(x[test], y[test]))
    assert result["test_accuracy"] > 0.8  # well-separated blobs
    assert (result["n_train"], result["n_val"], result["n_test"]) == (len(train), len(val), len(test))


def test_few_shot_curve_counts_seeds_and_zero_shot_worth():
    x, y = blobs(40, spread=2.5, seed=2)
    pool, test = stratified_split(y, 0.5, seed=0)
    train, val = stratified_split(y[pool], 0.2, seed=1)
    xp, yp = x[pool], y[pool]
    rng = np.random.default_rng(0)
    labels = yp[train]
    assert np.bincount(labels[sample_per_class(labels, 3, rng)]).tolist() == [3, 3, 3, 3]
    config = FewShotConfig(shots=(1, 2, 4, 8), seeds=2)
    curve = few_shot_curve(xp[train], yp[train], xp[val], yp[val], x[test], y[test], config, zero_shot_accuracy=0.6)
    assert [p["shots"] for p in curve["points"]] == [1, 2, 4, 8]
    for point in curve["points"]:
        assert len(point["accuracies"]) == 2 and point["mean"] == pytest.approx(np.mean(point["accuracies"]))
        assert point["std"] == pytest.approx(np.std(point["accuracies"]))
    assert len(curve["models"]) == 8
    assert curve["points"][-1]["mean"] > curve["points"][0]["mean"]  # more shots help on noisy blobs
    worth = curve["zero_shot_worth"]
    means = [p["mean"] for p in curve["points"]]
    if worth["shots"] is not None:
        assert 1 <= worth["shots"] <= 8
    else:
        assert worth["bound"] == ("below" if 0.6 <= means[0] else "above")


def test_robustness_against_a_probe_trend():
    # Probes lie exactly on logit(shifted) = logit(id) - 1; zero-shot sits above the line.
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    acc = {f"probe{i}": {"id": p, "a": sig(logit(p) - 1), "b": sig(logit(p) - 1)} for i, p in enumerate([0.5, 0.7, 0.9])}
    acc["zero-shot"] = {"id": 0.8, "a": 0.75, "b": 0.65}
    result = robustness_report(acc, "id", ["a", "b"], ["probe0", "probe1", "probe2"], ["zero-shot", "probe2"])
    assert result["trend"]["average_shifted"]["slope"] == pytest.approx(1.0)
    assert result["trend"]["average_shifted"]["intercept"] == pytest.approx(-1.0)
    zs = result["classifiers"]["zero-shot"]
    expected = 0.70 - sig(logit(0.8) - 1)
    assert zs["effective_robustness"]["average_shifted"] == pytest.approx(expected)
    assert zs["drop"] == pytest.approx(0.1)
    assert result["classifiers"]["probe2"]["effective_robustness"]["a"] == pytest.approx(0.0, abs=1e-9)
    one = robustness_report(acc, "id", ["a"], ["probe0"], ["zero-shot"])  # one baseline: y = x
    assert one["trend"]["a"] is None
    assert one["classifiers"]["zero-shot"]["effective_robustness"]["a"] == pytest.approx(-0.05)
    with pytest.raises(ValueError, match="no accuracy on"):
        robustness_report({"x": {"id": 0.5}}, "id", ["a"], [], ["x"])
