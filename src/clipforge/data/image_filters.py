"""Filters that need the images: CLIP score (DataComp's baseline) and decontamination against eval sets.

Both run on embeddings written by :mod:`clipforge.serve.embed` (``clipforge embed``, also under
torchrun), with the pool's uids as ids, so a pool of any size is scored part by part:

- **CLIP score**: cosine similarity of a pair's image and caption embeddings; drop pairs under
  ``min_clip_score`` (DataComp: 0.28-0.3 with OpenAI's ViT-L/14) or outside the ``top_fraction``
  best (DataComp's "CLIP score top 30%").
- **Decontamination**: the overlap detector of the evaluation suite (:mod:`clipforge.eval.overlap`)
  applied before training. For each registered eval set (classification and retrieval sets found
  under ``eval_root``), a threshold is calibrated on synthetic near-duplicates of that set's images
  (crop, shift, colour jitter, JPEG re-encode) at ``target_recall``, raised where needed so that at
  most ``max_false_positive_rate`` of the duplicates' nearest *other* eval images pass it (a
  removal should be a copy, not a look-alike; the recall reached is reported); a candidate whose maximum
  similarity to the set reaches it is dropped with the reason ``eval_overlap:<set>``, so the
  report counts removals per eval set, as the paper reports overlap per dataset. The detector is
  ``thumbnail`` (pixels, 8x8: finds copies; the default) or ``embedding`` (the model's image
  embedding: also finds look-alikes, see the calibration's false-positive rate).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from clipforge.data.curate_scan import check_row, default_uid
from clipforge.data.pool import PoolColumns, iter_parts, list_pool, read_header, resolve_columns


@dataclass(frozen=True)
class ImageFilterConfig:
    min_clip_score: float | None = None
    top_fraction: float | None = None
    eval_root: str | None = None
    detector: str = "thumbnail"
    target_recall: float = 0.95
    max_false_positive_rate: float = 0.01
    calibration_images: int = 200
    seed: int = 0


# ---- the pool as embedding items --------------------------------------------------------------


def pool_items(pool: str, kind: str, columns: PoolColumns = PoolColumns(), max_pixels: int = 40_000_000):
    """The pool's local images (``kind='image'``) or captions (``'text'``) as an embedding ItemSource,
    ids = the pool's uids. Rows that fail the row checks are left out (curate drops them anyway)."""
    from clipforge.data.decode import DecodeConfig, decode_image
    from clipforge.serve.embed_sources import Item, ItemSource

    files = list_pool(pool)
    cols = resolve_columns(read_header(files[0]), columns, files[0])
    if kind == "image" and cols.path is None:
        raise ValueError(f"{files[0]}: no local image path column ({cols.url} holds URLs: download first, "
                         "then score the shards' images)")
    decode = DecodeConfig(image_size=None, max_pixels=max_pixels)

    def image_loader(path: Path) -> Callable:
        def load():
            from clipforge.data.decode import BadSample

            try:
                return decode_image(path.read_bytes(), decode)
            except OSError:
                raise BadSample("missing_image", str(path)) from None
        return load

    def items() -> Iterator[Item]:
        for part in iter_parts(files, 10_000, []):
            base = Path(part.file).resolve().parent
            for offset, row in enumerate(part.rows):
                checked, _, _ = check_row(row, cols, default_uid(part, offset, len(files)))
                if checked is None:
                    continue
                if kind == "image":
                    path = Path(checked.url) if Path(checked.url).is_absolute() else base / checked.url
                    yield Item(checked.uid, str(path), image_loader(path))
                else:
                    yield Item(checked.uid, f"{Path(part.file).name}:{part.start + offset}",
                               (lambda text=checked.caption: text))
    return ItemSource(items(), None, f"{kind}s of pool {pool}", [])


def embed_pool(pool: str, encoder, out_dir: str | os.PathLike, kind: str, columns: PoolColumns = PoolColumns(),
               part_size: int = 10_000):
    """``clipforge embed`` over the pool's images or captions (resumable); returns the EmbedResult."""
    from clipforge.serve.embed import EmbedConfig, run_embedding

    source = pool_items(pool, kind, columns)
    header = {"kind": kind, "source": f"pool:{pool}", "model_sha256": encoder.fingerprint(), "dim": encoder.dim}
    encode = encoder.encode_pixels if kind == "image" else encoder.encode_texts
    prepare = encoder.preprocess if kind == "image" else None
    return run_embedding(source, encode, out_dir, EmbedConfig(part_size=part_size), header,
                         info={"model": encoder.name}, prepare=prepare)


# ---- CLIP score -------------------------------------------------------------------------------


def clip_score_removals(images, texts, config: ImageFilterConfig) -> tuple[dict[str, str], dict]:
    """uid → 'low_clip_score' for pairs under the threshold; ``images``/``texts``: read_embeddings() of the pool."""
    text_row = {uid: i for i, uid in enumerate(texts.ids)}
    both = [(i, text_row[uid]) for i, uid in enumerate(images.ids) if uid in text_row]
    if not both:
        raise ValueError("CLIP score: the image and text embeddings share no ids (embed the same pool)")
    a, b = (np.asarray(x) for x in zip(*both))
    scores = np.einsum("nd,nd->n", images.vectors[a], texts.vectors[b])  # both unit rows: cosine
    threshold = config.min_clip_score if config.min_clip_score is not None else -1.0
    if config.top_fraction is not None:
        threshold = max(threshold, float(np.quantile(scores, 1.0 - config.top_fraction)))
    low = scores < threshold
    removals = {images.ids[i]: "low_clip_score" for i in a[low]}
    summary = {"scored": int(len(scores)), "threshold": float(threshold), "removed": int(low.sum()),
               "score_mean": float(scores.mean()), "score_quantiles": np.quantile(scores, [0.1, 0.5, 0.9]).tolist()}
    return removals, summary


# ---- decontamination --------------------------------------------------------------------------


def eval_sets(eval_root: str | os.PathLike) -> dict[str, list[Path]]:
    """Image paths of every registered eval set under ``eval_root`` (the evaluation suite's discovery)."""
    from clipforge.eval.datasets import load_retrieval_set
    from clipforge.eval.layout import discover

    layout = discover(eval_root)
    sets = {name: list(spec.load()[0].paths) for name, spec in layout.classification.items()}
    sets.update({name: list(load_retrieval_set(path, name).paths) for name, path in layout.retrieval.items()})
    return sets


def _descriptors(encoder, images: list, detector: str, augment=None) -> torch.Tensor:
    """[N, D] unit descriptors of image files or bytes (embedding: the model's; thumbnail: 8x8 pixels, no model)."""
    from types import SimpleNamespace

    from clipforge.eval.datasets import encode_images
    from clipforge.eval.overlap import ImageBytes, detector_features

    data = ImageBytes([p.read_bytes() if isinstance(p, Path) else p for p in images], encoder.preprocess, augment)
    if detector == "thumbnail":  # the same descriptor as ImageFeatures.thumbnails, without running the model
        pixels = torch.stack([data[i] for i in range(len(data))]).float()  # [N, 3, S, S]
        features = SimpleNamespace(thumbnails=F.adaptive_avg_pool2d(pixels, 8).flatten(1))  # [N, 192]
    else:
        features = encode_images(encoder.model, encoder.preprocess, data, batch_size=64, progress=False)
    return F.normalize(detector_features(features, detector).float(), dim=-1)


def fpr_threshold(negatives: np.ndarray, max_rate: float) -> float:
    """The smallest threshold that at most ``max_rate`` of ``negatives`` reach (scores >= t are flagged)."""
    ranked = np.sort(np.asarray(negatives, dtype=np.float64))[::-1]
    allowed = int(np.floor(max_rate * len(ranked) + 1e-9))
    return float(np.nextafter(ranked[allowed], np.inf)) if allowed < len(ranked) else -np.inf


def calibrate_sets(encoder, sets: dict[str, list[Path]], config: ImageFilterConfig) -> dict[str, dict]:
    """Per eval set: its descriptors [N, D] and the threshold flagging ``target_recall`` of synthetic duplicates."""
    from clipforge.eval.overlap import calibrate, calibration_scores, make_duplicate

    out = {}
    for name, paths in sets.items():
        reference = _descriptors(encoder, paths, config.detector)
        rng = np.random.default_rng(config.seed)
        originals = np.sort(rng.choice(len(paths), size=min(config.calibration_images, len(paths)), replace=False))
        duplicates = _descriptors(encoder, [paths[i] for i in originals], config.detector, make_duplicate)
        positives, negatives = calibration_scores(reference, duplicates, originals)
        calibration = calibrate(positives, negatives, config.target_recall)
        threshold = max(calibration["threshold"], fpr_threshold(negatives, config.max_false_positive_rate))
        calibration.update(threshold=threshold, recall=float(np.mean(positives >= threshold)),
                           false_positive_rate=float(np.mean(negatives >= threshold)))
        out[name] = {"reference": reference, "calibration": calibration}
    return out


def overlap_removals(images, encoder, config: ImageFilterConfig) -> tuple[dict[str, str], dict]:
    """uid → 'eval_overlap:<set>' for candidates that near-duplicate an eval image; per-set summary.

    ``images``: the pool's image embeddings (read_embeddings), whose ``sources`` are the image files.
    The thumbnail detector re-reads those files in batches (pixels are not in the embeddings).
    """
    sets = calibrate_sets(encoder, eval_sets(config.eval_root), config)
    removals: dict[str, str] = {}
    best = {name: np.full(len(images.ids), -np.inf, dtype=np.float32) for name in sets}
    for start in range(0, len(images.ids), 512):
        stop = min(start + 512, len(images.ids))
        if config.detector == "embedding":
            batch = F.normalize(torch.from_numpy(images.vectors[start:stop]).float(), dim=-1)
        else:
            batch = _descriptors(encoder, [Path(s) for s in images.sources[start:stop]], config.detector)
        for name, entry in sets.items():
            best[name][start:stop] = (batch @ entry["reference"].t()).max(dim=1).values.numpy()
    summary = {}
    for name, entry in sorted(sets.items()):  # removed for the first set (by name) it overlaps
        flagged = best[name] >= entry["calibration"]["threshold"]
        new = [uid for uid, f in zip(images.ids, flagged) if f and uid not in removals]
        removals.update({uid: f"eval_overlap:{name}" for uid in new})
        summary[name] = {"flagged": int(flagged.sum()), "removed": len(new), "eval_images": len(entry["reference"]),
                         "threshold": entry["calibration"]["threshold"],
                         "calibration_recall": entry["calibration"]["recall"],
                         "calibration_false_positive_rate": entry["calibration"]["false_positive_rate"]}
    return removals, {"detector": config.detector, "target_recall": config.target_recall,
                      "max_false_positive_rate": config.max_false_positive_rate, "sets": summary}


__all__ = ["ImageFilterConfig", "calibrate_sets", "clip_score_removals", "embed_pool", "eval_sets",
           "overlap_removals", "pool_items"]
