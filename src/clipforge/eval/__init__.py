"""Evaluation (application layer): zero-shot, linear probe, few-shot, retrieval, robustness, overlap.

- :func:`run_suite`: every protocol over a data root → report.json, report.md, plots, a dict.
- :func:`zero_shot_accuracy`: a light zero-shot check (for periodic evaluation during training).
- :mod:`clipforge.eval.metrics`: the pure metric functions.
- Sets: :mod:`~clipforge.eval.layout` (formats, discovery), :mod:`~clipforge.eval.wds` (CLIP_benchmark's
  webdataset layout), :mod:`~clipforge.eval.fetch` (remote sets), :mod:`~clipforge.eval.dataset_zoo` and
  :mod:`~clipforge.eval.named` (datasets by name, the paper's prompts); protocols in
  :mod:`~clipforge.eval.protocols`; results in CLIP_benchmark's schema in :mod:`~clipforge.eval.cb_results`;
  the models × datasets grid in :mod:`~clipforge.eval.benchmark`.

scikit-learn (linear probes), scipy (the overlap binomial test) and matplotlib (plots) are imported
only where used: the ``eval`` extra.
"""

from __future__ import annotations

from clipforge.eval.datasets import (
    ClassificationSet,
    ImageFeatures,
    RetrievalSet,
    encode_images,
    load_classification_set,
    load_retrieval_set,
)
from clipforge.eval.few_shot import FewShotConfig, few_shot_curve
from clipforge.eval.layout import DataLayout, discover
from clipforge.eval.linear_probe import ProbeConfig, linear_probe
from clipforge.eval.overlap import OverlapConfig
from clipforge.eval.retrieval import evaluate_retrieval, score_retrieval
from clipforge.eval.suite import PROTOCOLS, EvalConfig, run_suite
from clipforge.eval.zero_shot import score_zero_shot, zero_shot_accuracy

__all__ = [
    "PROTOCOLS",
    "ClassificationSet",
    "DataLayout",
    "EvalConfig",
    "FewShotConfig",
    "ImageFeatures",
    "OverlapConfig",
    "ProbeConfig",
    "RetrievalSet",
    "discover",
    "encode_images",
    "evaluate_retrieval",
    "few_shot_curve",
    "linear_probe",
    "load_classification_set",
    "load_retrieval_set",
    "run_suite",
    "score_retrieval",
    "score_zero_shot",
    "zero_shot_accuracy",
]
