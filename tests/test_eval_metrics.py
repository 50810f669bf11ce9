"""The pure metric functions against scikit-learn, scipy and hand-computed values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score
from sklearn.metrics import confusion_matrix as sk_confusion

from clipforge.eval import metrics as M


def test_topk_accuracy_matches_sklearn_and_is_nan_beyond_the_classes():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(200, 7)))
    targets = torch.tensor(rng.integers(0, 7, 200))
    ours = M.topk_accuracy(logits, targets, (1, 3, 5, 8))
    for k in (1, 3, 5):
        assert ours[k] == pytest.approx(top_k_accuracy_score(targets, logits.numpy(), k=k, labels=range(7)))
    assert math.isnan(ours[8])
    assert M.topk_accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), [1, 1], (1,)) == {1: 0.5}


def test_mean_per_class_recall_is_balanced_accuracy_even_with_absent_classes():
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 5, 300)
    predictions = np.where(rng.random(300) < 0.6, targets, rng.integers(0, 7, 300))  # predicts 5, 6 too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about predicted classes absent from y_true
        expected = balanced_accuracy_score(targets, predictions)
    assert M.mean_per_class_recall(predictions, targets) == pytest.approx(expected)
    # Hand value: class 0 recall 1/2, class 1 recall 1/1 → 0.75.
    assert M.mean_per_class_recall([0, 1, 1], [0, 0, 1]) == pytest.approx(0.75)


def test_confusion_matrix_and_per_class_recall():
    rng = np.random.default_rng(2)
    targets, predictions = rng.integers(0, 4, 100), rng.integers(0, 4, 100)
    np.testing.assert_array_equal(M.confusion_matrix(predictions, targets, 4), sk_confusion(targets, predictions, labels=range(4)))
    recall = M.per_class_recall([0, 0, 1], [0, 1, 1], 3)
    assert recall[0] == 1.0 and recall[1] == 0.5 and math.isnan(recall[2])
    with pytest.raises(ValueError, match="outside"):
        M.confusion_matrix([3], [0], 2)


def _brute_recall(scores, positives, k):
    """Per query: sort by score (stable, descending) and look for a positive among the first k."""
    hits = []
    for row, pos in zip(scores.tolist(), positives.tolist()):
        order = sorted(range(len(row)), key=lambda j: -row[j])[:k]
        hits.append(any(pos[j] for j in order))
    return np.array(hits)


def test_recall_at_k_hand_example_with_several_captions_per_image():
    # 3 images, 5 captions; captions 0,1 → image 0; 2 → image 1; 3,4 → image 2.
    text_to_image = [0, 0, 1, 2, 2]
    scores = torch.tensor(  # [captions, images]
        [[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.3, 0.2, 0.1], [0.0, 0.1, 0.9], [0.5, 0.4, 0.3]]
    )
    positives = M.positives_from_index(text_to_image, 3)
    assert M.recall_at_k(scores, positives, 1).tolist() == [True, False, False, True, False]
    assert M.recall_at_k(scores, positives, 2).tolist() == [True, True, True, True, False]
    # image → text: image 0's best captions are 0 (0.9) → hit; image 1's best is 1 (0.8), not its own;
    # image 2's best is 3 (0.9) → hit. At k=2 image 1's second best is 4 (0.4): still a miss.
    assert M.recall_at_k(scores.t(), positives.t(), 1).tolist() == [True, False, True]
    assert M.recall_at_k(scores.t(), positives.t(), 2).tolist() == [True, False, True]
    assert M.recall_at_k(scores.t(), positives.t(), 99).all()  # k beyond the gallery: clipped


def test_retrieval_recalls_against_brute_force():
    rng = np.random.default_rng(3)
    images = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(30, 8))), dim=-1)
    text_to_image = np.repeat(np.arange(30), rng.integers(1, 4, 30))
    texts = torch.nn.functional.normalize(images[text_to_image] + 0.9 * torch.tensor(rng.normal(size=(len(text_to_image), 8))), dim=-1)
    result = M.retrieval_recalls(images, texts, text_to_image, (1, 5, 10))
    scores = (texts @ images.t()).numpy()
    positives = M.positives_from_index(text_to_image, 30).numpy()
    for k in (1, 5, 10):
        assert result[f"text_to_image_R@{k}"] == pytest.approx(_brute_recall(scores, positives, k).mean())
        assert result[f"image_to_text_R@{k}"] == pytest.approx(_brute_recall(scores.T, positives.T, k).mean())
    assert 0 < result["text_to_image_R@1"] < result["text_to_image_R@10"] <= 1


def test_logit_line_and_effective_robustness():
    ids = np.array([0.5, 0.7, 0.9])
    shifted = M.sigmoid(0.5 * M.logit(ids) - 1.0)  # exactly on a line in logit space
    slope, intercept = M.fit_logit_line(ids, shifted)
    assert slope == pytest.approx(0.5) and intercept == pytest.approx(-1.0)
    on_line = float(M.sigmoid(0.5 * M.logit(0.8) - 1.0))
    assert M.effective_robustness(0.8, on_line + 0.1, (slope, intercept)) == pytest.approx(0.1)
    assert M.effective_robustness(0.8, 0.6, None) == pytest.approx(-0.2)
    with pytest.raises(ValueError, match="two baselines"):
        M.fit_logit_line([0.5, 0.5], [0.2, 0.3])


def test_shots_matching_interpolates_in_log2():
    ks, acc = [1, 2, 4, 8, 16], [0.2, 0.4, 0.6, 0.7, 0.8]
    assert M.shots_matching(ks, acc, 0.5) == {"shots": pytest.approx(2**1.5), "bound": None}
    assert M.shots_matching(ks, acc, 0.7)["shots"] == pytest.approx(8.0)
    assert M.shots_matching(ks, acc, 0.1) == {"shots": None, "bound": "below"}
    assert M.shots_matching(ks, acc, 0.95) == {"shots": None, "bound": "above"}


def test_threshold_at_recall_hand_values():
    positives = [0.99, 0.97, 0.95, 0.90, 0.50]
    negatives = [0.40, 0.92, 0.96, 0.10]
    result = M.threshold_at_recall(positives, negatives, 0.8)  # 4 of 5 positives → threshold 0.90
    assert result == {"threshold": 0.90, "recall": 0.8, "false_positive_rate": 0.5}
    assert M.threshold_at_recall(positives, negatives, 1.0)["threshold"] == 0.50
