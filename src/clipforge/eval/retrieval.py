"""Image↔text retrieval Recall@k, as LAION's CLIP_benchmark computes it.

Matching ``clip_benchmark/metrics/zeroshot_retrieval.py``: image and caption embeddings are
L2-normalized; scores are the plain dot products (no logit scale); a caption-to-image and an
image-to-captions ``positive_pairs`` matrix allow several captions per image; a query scores 1
when any positive is in its top k (``torch.topk``), and Recall@k is the mean over queries (every
caption for text→image, every image for image→text). CLIP_benchmark names text→image
``image_retrieval_recall@k`` and image→text ``text_retrieval_recall@k``; results carry both names.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from clipforge.eval.datasets import RetrievalSet, encode_images
from clipforge.eval.metrics import retrieval_recalls
from clipforge.zeroshot import encode_texts, tokenize_for

RECALL_KS = (1, 5, 10)


def score_retrieval(
    image_features: torch.Tensor, text_features: torch.Tensor, caption_image: Sequence[int], ks: Sequence[int] = RECALL_KS
) -> dict:
    """Features (any norm) [I, D] and [T, D], caption → image index [T] → recalls + CLIP_benchmark names."""
    images, texts = F.normalize(image_features.float(), dim=-1), F.normalize(text_features.float(), dim=-1)
    recalls = retrieval_recalls(images, texts, caption_image, ks)
    aliases = {}
    for k in ks:
        aliases[f"image_retrieval_recall@{k}"] = recalls[f"text_to_image_R@{k}"]
        aliases[f"text_retrieval_recall@{k}"] = recalls[f"image_to_text_R@{k}"]
    return {**recalls, "n_images": int(len(images)), "n_captions": int(len(texts)), "clip_benchmark": aliases}


def encode_captions(model: Any, tokenizer: Callable, captions: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Captions → normalized text embeddings [T, D]."""
    return encode_texts(model, tokenize_for(model, tokenizer, captions), batch_size)


def evaluate_retrieval(
    model: Any,
    preprocess: Callable,
    tokenizer: Callable,
    dataset: RetrievalSet,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = True,
    ks: Sequence[int] = RECALL_KS,
) -> dict:
    features = encode_images(
        model, preprocess, dataset.paths, batch_size=batch_size, num_workers=num_workers, progress=progress, desc=dataset.name
    )
    if features.kept is not None:  # unreadable images are left out with their captions
        dataset = dataset.subset(features.kept)
    texts = encode_captions(model, tokenizer, dataset.captions, batch_size)
    result = score_retrieval(features.embeddings, texts, dataset.caption_image, ks)
    return {**result, "skipped_images": len(features.skipped)} if features.skipped else result
