"""Train/eval overlap: a near-duplicate detector and accuracy on overlapping vs clean images.

As in the paper's section 5: flag evaluation images that have a near-duplicate in the training
data, report the overlap fraction and accuracy on all / overlapping / clean subsets, with a
one-sided binomial test of whether overlap accuracy exceeds clean accuracy. The detector here is
the evaluated model's own image embedding (the paper trained a separate one): an eval image's
score is its maximum cosine similarity to a pool of training images.

A second, pixel-level detector (``thumbnail``: the preprocessed image average-pooled to 8×8,
centred) runs beside it from the same pass: a semantic embedding also matches different images
of the same content (on the synthetic world, most images have look-alikes in training), which the
calibration's false-positive rate exposes; the thumbnail detector finds copies only.

Each threshold is calibrated on synthetic duplicates made from pool images (a random 80-95% crop
resized back, a shift of up to 2% of the size, slight colour jitter, a JPEG re-encode at quality 30-90):
a duplicate's score against its original is a positive; its maximum score against every other
pool image is a negative. The threshold is the largest value that flags ``target_recall`` of the
positives; the negatives flagged at it are the reported false-positive rate. The pool is a uniform
sample of at most ``max_train_images`` training images (reservoir sampling), so against a larger
training set the overlap fraction is a lower bound.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance
from torch.utils.data import Dataset

from clipforge.eval.metrics import threshold_at_recall


DETECTORS = {
    "embedding": "max cosine similarity of the evaluated model's image embeddings to the training pool",
    "thumbnail": "max cosine similarity of the preprocessed images average-pooled to 8x8 and centred "
    "(pixel level: finds copies, not look-alikes)",
}
RELIABLE_FPR = 0.05  # above this false-positive rate on calibration, flagged counts are mostly look-alikes


@dataclass(frozen=True)
class OverlapConfig:
    train_source: str | None = None  # shards/folder/CSV spec; None: the data root's train/ folder
    max_train_images: int = 2000
    calibration_images: int = 200
    target_recall: float = 0.95
    detectors: tuple[str, ...] = ("embedding", "thumbnail")
    seed: int = 0

    def describe(self) -> dict:
        return asdict(self)


# ---- the training pool ------------------------------------------------------------------------


def source_spec(source: str | os.PathLike) -> list[str] | str:
    """A folder of .tar shards becomes their list; anything else is passed to the data package."""
    path = Path(source)
    if path.is_dir():
        shards = sorted(str(p) for p in path.glob("*.tar"))
        if shards:
            return shards
    return str(source)


def sample_training_images(source: str | os.PathLike, limit: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """A uniform sample (reservoir) of at most ``limit`` (key, image bytes) from a data source."""
    from clipforge.data.decode import IMAGE_EXTS
    from clipforge.data.sources import RawSample, iter_shard, list_shards, load_bytes

    rng = np.random.default_rng(seed)
    reservoir: list[tuple[str, Any]] = []
    seen = 0
    for ref in list_shards(source_spec(source)):
        for sample in iter_shard(ref):
            if not isinstance(sample, RawSample):
                continue  # a broken shard: keep what was read before the break
            member = next((sample.files[e] for e in IMAGE_EXTS if e in sample.files), None)
            if member is None:
                continue
            seen += 1
            if len(reservoir) < limit:
                reservoir.append((f"{ref.name}/{sample.key}", member))
            else:
                slot = int(rng.integers(0, seen))
                if slot < limit:
                    reservoir[slot] = (f"{ref.name}/{sample.key}", member)
    pool = [(key, load_bytes(member)) for key, member in reservoir]
    pool = [(key, data) for key, data in pool if data]
    if not pool:
        raise ValueError(f"training source {source}: no images found")
    return pool


class ImageBytes(Dataset):
    """Encoded images in memory → preprocessed tensors; ``augment`` (PIL → PIL) applied first."""

    def __init__(self, items: Sequence[bytes | Image.Image], preprocess: Callable, augment: Callable | None = None):
        self.items, self.preprocess, self.augment = list(items), preprocess, augment

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self.items[index]
        image = item if isinstance(item, Image.Image) else Image.open(io.BytesIO(item))
        if self.augment is not None:  # else the image goes to preprocess as read, like eval images
            image = self.augment(image.convert("RGB"), np.random.default_rng([index, 7]))
        return self.preprocess(image)


# ---- synthetic duplicates and calibration -----------------------------------------------------


def make_duplicate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A near-duplicate: 80-95% crop resized back, a shift of ≤2% of the size (at least 1 px, 4 px at
    224 px), ±10% brightness and saturation jitter, a JPEG re-encode at quality 30-90."""
    w, h = image.size
    scale = rng.uniform(0.80, 0.95)
    cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = image.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BICUBIC)
    reach = max(1, round(0.02 * min(w, h)))
    dx, dy = (int(v) for v in rng.integers(-reach, reach + 1, size=2))
    out = out.transform(out.size, Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -dy), fillcolor=(128, 128, 128))
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.9, 1.1))
    out = ImageEnhance.Color(out).enhance(rng.uniform(0.9, 1.1))
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=int(rng.integers(30, 91)))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def max_similarity(queries: torch.Tensor, pool: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity of each query [Q, D] to its nearest pool item [P, D] → (max [Q], argmax [Q])."""
    q, p = F.normalize(queries.float(), dim=-1), F.normalize(pool.float(), dim=-1)
    best, where = [], []
    for start in range(0, len(q), chunk):
        values, index = (q[start : start + chunk] @ p.t()).max(dim=1)
        best.append(values)
        where.append(index)
    return torch.cat(best), torch.cat(where)


def calibration_scores(pool: torch.Tensor, duplicates: torch.Tensor, originals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive scores (duplicate vs its original) and negative scores (max vs all other pool items).

    ``pool`` [P, D], ``duplicates`` [M, D] made from pool rows ``originals`` [M].
    """
    sims = F.normalize(duplicates.float(), dim=-1) @ F.normalize(pool.float(), dim=-1).t()  # [M, P]
    rows = torch.arange(len(originals))
    index = torch.as_tensor(originals, dtype=torch.long)
    positives = sims[rows, index].clone()
    sims[rows, index] = -float("inf")
    negatives = sims.max(dim=1).values
    return positives.numpy(), negatives.numpy()


def calibrate(positives: np.ndarray, negatives: np.ndarray, target_recall: float) -> dict:
    result = threshold_at_recall(positives, negatives, target_recall)
    result.update(
        {
            "target_recall": target_recall,
            "n_duplicates": int(len(positives)),
            "positive_score_mean": float(np.mean(positives)),
            "negative_score_mean": float(np.mean(negatives)),
        }
    )
    return result


# ---- the overlap table ------------------------------------------------------------------------


def overlap_table(scores: np.ndarray, threshold: float, correct: np.ndarray) -> dict:
    """Accuracy on all / overlapping (score ≥ threshold) / clean images, as the paper's Table 17.

    ``p_value``: one-sided binomial test that overlap accuracy exceeds clean accuracy.
    """
    flagged = np.asarray(scores) >= threshold
    correct = np.asarray(correct, dtype=bool)
    n_overlap = int(flagged.sum())

    def acc(mask: np.ndarray) -> float | None:
        return float(correct[mask].mean()) if mask.any() else None

    all_acc, overlap_acc, clean_acc = acc(np.ones_like(flagged)), acc(flagged), acc(~flagged)
    p_value = None
    if n_overlap and clean_acc is not None:
        from scipy.stats import binomtest

        p_value = float(binomtest(int(correct[flagged].sum()), n_overlap, clean_acc, alternative="greater").pvalue)
    return {
        "n": int(len(flagged)),
        "n_overlap": n_overlap,
        "overlap_fraction": float(flagged.mean()) if len(flagged) else None,
        "accuracy_all": all_acc,
        "accuracy_overlap": overlap_acc,
        "accuracy_clean": clean_acc,
        "all_minus_clean": None if clean_acc is None else all_acc - clean_acc,
        "p_value": p_value,
    }


# ---- the protocol -----------------------------------------------------------------------------


def detector_features(features, detector: str) -> torch.Tensor:
    """The descriptor a detector compares, from :class:`~clipforge.eval.datasets.ImageFeatures`."""
    if detector == "embedding":
        return features.embeddings
    if detector == "thumbnail":
        thumbs = features.thumbnails
        return thumbs - thumbs.mean(dim=1, keepdim=True)  # centred: insensitive to a brightness shift
    raise ValueError(f"unknown overlap detector {detector!r}; choose from {list(DETECTORS)}")


def run_overlap(encode: Callable, items: list[tuple[str, bytes]], evaluations: dict, config: OverlapConfig,
                preprocess: Callable) -> dict:
    """Calibrate each detector on duplicates of pool images, then score every evaluation set.

    ``encode(dataset, desc)`` → ImageFeatures; ``evaluations`` maps a set name to
    (ImageFeatures, correct [N] bool) from the classifier being audited.
    """
    if len(items) < 2:
        raise ValueError("overlap: the training pool needs at least two images")
    pool = encode(ImageBytes([data for _, data in items], preprocess), "training pool")
    rng = np.random.default_rng(config.seed)
    originals = np.sort(rng.choice(len(items), size=min(config.calibration_images, len(items)), replace=False))
    duplicates = encode(ImageBytes([items[i][1] for i in originals], preprocess, make_duplicate), "duplicates")
    detectors = {}
    for name in config.detectors:
        reference = detector_features(pool, name)
        calibration = calibrate(
            *calibration_scores(reference, detector_features(duplicates, name), originals), config.target_recall
        )
        tasks = {}
        for task, (features, correct) in evaluations.items():
            scores, _ = max_similarity(detector_features(features, name), reference)
            tasks[task] = overlap_table(scores.numpy(), calibration["threshold"], correct)
        detectors[name] = {"description": DETECTORS[name], "calibration": calibration,
                           "reliable": calibration["false_positive_rate"] <= RELIABLE_FPR, "tasks": tasks}
    return {"pool": {"images": len(items), "sampling": "uniform reservoir sample"}, "config": config.describe(),
            "detectors": detectors}
