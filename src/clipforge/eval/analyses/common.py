"""What the analyses share: zero-shot heads over any label list with a task's prompts, and task choice."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import torch

from clipforge.zeroshot import build_classifier, zero_shot_logits

# Prompts for labels a per-class template table (the zoo's) has no entry for.
FALLBACK_TEMPLATE = "a photo of a {}."


def label_head(suite: Any, task: str, labels: Sequence[str]) -> torch.Tensor:
    """A zero-shot head [len(labels), D] over ``labels`` with ``task``'s prompts, cached in the suite.

    Labels that are not the task's classes (harmful or added probe labels, coarse classes) get the
    task's templates; with per-class prompts (a table), :data:`FALLBACK_TEMPLATE`.
    """
    templates = suite.templates_of(task)
    if isinstance(templates, Mapping):
        templates = {label: list(templates.get(label) or [FALLBACK_TEMPLATE.format(label)]) for label in labels}
    key = (tuple(labels), json.dumps(templates, sort_keys=True))
    if key not in suite.heads:
        c = suite.config
        suite.heads[key] = build_classifier(suite.model, suite.tokenizer, list(labels), templates,
                                            batch_size=c.batch_size, cache_dir=c.cache_dir)
    return suite.heads[key]


def logits_over(suite: Any, task: str, labels: Sequence[str]) -> np.ndarray:
    """Zero-shot logits [N, len(labels)] of the task's evaluation images (100 · cosine, as scored)."""
    return zero_shot_logits(suite.features(task).embeddings, label_head(suite, task, labels)).numpy()


def single_label_tasks(suite: Any, base_only: bool = True) -> list[str]:
    """The suite's single-label classification tasks (only in-distribution ones with ``base_only``)."""
    names = [n for n in suite.task_names if not base_only or suite.layout.classification[n].shift is None]
    return [n for n in names if not suite.task(n).eval_set.multilabel]


def interval_text(value: float | None, ci: Sequence[float] | None, scale: float = 100.0, digits: int = 1) -> str:
    """``12.3 [10.1, 14.6]`` (percent by default); ``–`` for a missing value."""
    if value is None:
        return "–"
    text = f"{scale * value:.{digits}f}"
    return text if not ci else f"{text} [{scale * ci[0]:.{digits}f}, {scale * ci[1]:.{digits}f}]"
