"""Overlap: training pools from shards/folders, synthetic duplicates, calibration, the overlap table."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import binomtest

from clipforge.eval.datasets import encode_images
from clipforge.eval.overlap import (
    ImageBytes,
    OverlapConfig,
    calibrate,
    calibration_scores,
    make_duplicate,
    max_similarity,
    overlap_table,
    run_overlap,
    sample_training_images,
)
from test_eval_data import CLASSES, draw, write_shards


class PooledPixels(torch.nn.Module):
    """A feature extractor we understand: the image average-pooled to 4×4 per channel, centred.

    Near-duplicates (crops, JPEG, small shifts) keep these features; other images move them.
    """

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(images, 4).flatten(1)  # [N, 48]
        return pooled - pooled.mean(dim=1, keepdim=True)


def _images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [draw(s, c, rng, size=48) for c, s in (CLASSES * n)[:n]]


def _textures(n: int, seed: int) -> list[Image.Image]:
    """Smooth random colour fields (3×3 random pixels, upsampled): every image is distinct."""
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)).resize((48, 48), Image.Resampling.BICUBIC)
        for _ in range(n)
    ]


def _preprocess(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB").resize((32, 32)), dtype=np.float32) / 255).permute(2, 0, 1)


def test_sample_training_images_from_shards_and_folders(tmp_path):
    images = _images(50, seed=0)
    write_shards(tmp_path / "shards", images, per_shard=20)  # three shards
    everything = sample_training_images(tmp_path / "shards", limit=100)
    assert len(everything) == 50 and len({key for key, _ in everything}) == 50
    decoded = Image.open(io.BytesIO(everything[7][1]))
    assert np.array_equal(np.asarray(decoded), np.asarray(images[7]))  # reservoir kept stream order while filling
    sample = sample_training_images(tmp_path / "shards", limit=10, seed=1)
    assert len(sample) == 10 and sample != sample_training_images(tmp_path / "shards", limit=10, seed=2)
    folder = tmp_path / "folder" / "sub"
    folder.mkdir(parents=True)
    for i, image in enumerate(images[:5]):
        image.save(folder / f"{i}.png")
    assert len(sample_training_images(tmp_path / "folder", limit=100)) == 5
    with pytest.raises(ValueError, match="no images"):
        (tmp_path / "empty").mkdir()
        sample_training_images(tmp_path / "empty", limit=10)


def test_make_duplicate_is_seeded_and_keeps_the_size():
    image = _images(1, seed=3)[0]
    a = make_duplicate(image, np.random.default_rng(0))
    b = make_duplicate(image, np.random.default_rng(0))
    c = make_duplicate(image, np.random.default_rng(1))
    assert a.size == image.size and np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c)) and not np.array_equal(np.asarray(a), np.asarray(image))


def test_calibration_scores_exclude_the_original():
    pool = torch.eye(4)
    duplicates = torch.tensor([[1.0, 0.5, 0, 0], [0, 0.2, 0, 1.0]])
    positives, negatives = calibration_scores(pool, duplicates, np.array([0, 3]))
    np.testing.assert_allclose(positives, [1 / np.sqrt(1.25), 1 / np.sqrt(1.04)], rtol=1e-6)
    np.testing.assert_allclose(negatives, [0.5 / np.sqrt(1.25), 0.2 / np.sqrt(1.04)], rtol=1e-6)
    scores, nearest = max_similarity(torch.tensor([[0.0, 2.0, 0, 0]]), pool)
    assert scores.tolist() == [1.0] and nearest.tolist() == [1]


def test_detector_flags_copies_of_training_images():
    model, train = PooledPixels(), _textures(120, seed=4)
    items = [_png(i) for i in train]
    pool = encode_images(model, _preprocess, ImageBytes(items, _preprocess), batch_size=64, progress=False).embeddings
    originals = np.arange(0, 120, 2)
    dups = encode_images(model, _preprocess, ImageBytes([items[i] for i in originals], _preprocess, make_duplicate),
                         progress=False).embeddings
    calibration = calibrate(*calibration_scores(pool, dups, originals), target_recall=0.95)
    assert calibration["recall"] >= 0.95 and calibration["false_positive_rate"] <= 0.05
    assert calibration["positive_score_mean"] > calibration["negative_score_mean"] + 0.2
    copies = [_jpeg(train[i]) for i in range(0, 20)]  # re-encoded copies: overlap
    fresh = _textures(20, seed=5)  # new images: clean
    queries = encode_images(model, _preprocess, ImageBytes([_png(i) for i in copies + fresh], _preprocess),
                            progress=False).embeddings
    scores, _ = max_similarity(queries, pool)
    flagged = (scores.numpy() >= calibration["threshold"])
    assert flagged[:20].all()
    assert not flagged[20:].any()


def test_run_overlap_thumbnail_detector_finds_copies_only():
    train = _textures(80, seed=6)
    items = [(str(i), _png(image)) for i, image in enumerate(train)]
    copies, fresh = [_jpeg(image) for image in train[:10]], _textures(10, seed=7)

    def encode(dataset, desc):
        return encode_images(PooledPixels(), _preprocess, dataset, batch_size=32, progress=False)

    features = encode(ImageBytes([_png(i) for i in copies + fresh], _preprocess), "eval")
    correct = np.array([True] * 5 + [False] * 5 + [True] * 10)
    result = run_overlap(encode, items, {"set": (features, correct)},
                         OverlapConfig(calibration_images=40, detectors=("thumbnail",)), _preprocess)
    detector = result["detectors"]["thumbnail"]
    assert detector["reliable"] and result["pool"]["images"] == 80
    table = detector["tasks"]["set"]
    assert table["n_overlap"] == 10 and table["accuracy_overlap"] == 0.5 and table["accuracy_clean"] == 1.0
    with pytest.raises(ValueError, match="unknown overlap detector"):
        run_overlap(encode, items, {}, OverlapConfig(detectors=("nope",)), _preprocess)


def test_overlap_table_hand_values():
    scores = np.array([0.99, 0.98, 0.5, 0.4, 0.3, 0.97])
    correct = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    table = overlap_table(scores, threshold=0.95, correct=correct)
    assert table["n_overlap"] == 3 and table["overlap_fraction"] == 0.5
    assert table["accuracy_all"] == pytest.approx(0.5)
    assert table["accuracy_overlap"] == pytest.approx(2 / 3) and table["accuracy_clean"] == pytest.approx(1 / 3)
    assert table["all_minus_clean"] == pytest.approx(0.5 - 1 / 3)
    assert table["p_value"] == pytest.approx(binomtest(2, 3, 1 / 3, alternative="greater").pvalue)
    none = overlap_table(scores, threshold=2.0, correct=correct)
    assert none["n_overlap"] == 0 and none["accuracy_overlap"] is None and none["p_value"] is None


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
