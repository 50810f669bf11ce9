"""The evaluation suite: every protocol over a data root, features computed once and shared.

``run_suite(model, preprocess, tokenizer, data_root, out_dir)`` finds the sets
(:mod:`clipforge.eval.layout`), encodes each image set once, runs the chosen protocols and writes
``report.json``, ``report.md`` and PNG plots into ``out_dir``; it returns the report as a dict.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from clipforge.eval import report as reporting
from clipforge.eval.datasets import ClassificationSet, ImageFeatures, encode_images, load_retrieval_set
from clipforge.eval.few_shot import FewShotConfig, few_shot_curve
from clipforge.eval.layout import DataLayout, discover
from clipforge.eval.linear_probe import ProbeConfig, linear_probe, stratified_split
from clipforge.eval.metrics import accuracy, confusion_matrix
from clipforge.eval.overlap import OverlapConfig
from clipforge.eval.retrieval import evaluate_retrieval
from clipforge.eval.robustness import robustness_report
from clipforge.eval.zero_shot import score_zero_shot
from clipforge.zeroshot import build_classifier, load_templates, zero_shot_logits

PROTOCOLS = ("zeroshot", "linear_probe", "few_shot", "retrieval", "robustness", "overlap")


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 256
    num_workers: int = 0
    templates: str | None = None  # set name or file; None: the manifest's per task, else openai_imagenet
    tasks: tuple[str, ...] | None = None  # classification tasks to use (None: all found)
    # Few-shot curves cost ~16 probe fits per (k, seed): by default only the in-distribution tasks
    # that have shifted versions (robustness needs their probes anyway), else every base task.
    few_shot_tasks: tuple[str, ...] | None = None
    cache_dir: str | None = None  # zero-shot head cache; None: no cache
    examples_per_class: int = 2  # images per class kept with their top-3 classes (the HTML report's grid)
    progress: bool = True
    plots: bool = True
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    few_shot: FewShotConfig = field(default_factory=FewShotConfig)
    overlap: OverlapConfig = field(default_factory=OverlapConfig)


@dataclass
class _Task:
    """One classification task's data, features and split (filled on first use)."""

    eval_set: ClassificationSet
    train_set: ClassificationSet | None
    templates: tuple[str, str | tuple[str, ...]]  # (label, templates)
    features: ImageFeatures | None = None
    train_features: ImageFeatures | None = None
    zero_shot: tuple[dict, np.ndarray] | None = None
    split: dict | None = None
    probes: dict | None = None


class Suite:
    """The protocols over one model and one data layout; each result computed at most once."""

    def __init__(self, model: Any, preprocess: Callable, tokenizer: Callable, layout: DataLayout, config: EvalConfig):
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.layout, self.config = layout, config
        self.tasks: dict[str, _Task] = {}
        self.heads: dict[tuple, torch.Tensor] = {}
        names = list(layout.classification)
        unknown = sorted(set(config.tasks or ()) - set(names))
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; found {names} under {layout.root}")
        self.task_names = [n for n in names if config.tasks is None or n in config.tasks]

    # ---- data and features ----------------------------------------------------------------

    def task(self, name: str) -> _Task:
        if name not in self.tasks:
            spec = self.layout.classification[name]
            eval_set, train_set = spec.load()
            if self.config.templates is not None:
                templates = (Path(self.config.templates).stem, self.config.templates)
            elif spec.templates is not None:
                templates = (f"{name} (manifest)", spec.templates)
            else:
                templates = ("openai_imagenet", "openai_imagenet")
            self.tasks[name] = _Task(eval_set, train_set, templates)
        return self.tasks[name]

    def _encode(self, dataset: ClassificationSet) -> ImageFeatures:
        c = self.config
        return encode_images(
            self.model, self.preprocess, dataset.paths, batch_size=c.batch_size, num_workers=c.num_workers,
            progress=c.progress, desc=dataset.name,
        )

    def features(self, name: str) -> ImageFeatures:
        task = self.task(name)
        if task.features is None:
            task.features = self._encode(task.eval_set)
        return task.features

    def probe_features(self, features: ImageFeatures) -> np.ndarray:
        kind = self.config.probe.features
        if kind not in ("pre_projection", "embedding"):
            raise ValueError(f"probe features must be 'pre_projection' or 'embedding', not {kind!r}")
        return (features.pre_projection if kind == "pre_projection" else features.embeddings).numpy()

    # ---- zero-shot ------------------------------------------------------------------------

    def head(self, name: str) -> torch.Tensor:
        task = self.task(name)
        _, templates = task.templates
        key = (task.eval_set.classnames, templates if isinstance(templates, tuple) else str(templates))
        if key not in self.heads:
            loaded = load_templates(templates) if isinstance(templates, (str, os.PathLike)) else list(templates)
            self.heads[key] = build_classifier(
                self.model, self.tokenizer, task.eval_set.classnames, loaded,
                batch_size=self.config.batch_size, cache_dir=self.config.cache_dir,
            )
        return self.heads[key]

    def zero_shot(self, name: str) -> tuple[dict, np.ndarray]:
        task = self.task(name)
        if task.zero_shot is None:
            task.zero_shot = score_zero_shot(self.features(name).embeddings, task.eval_set.labels, self.head(name))
        return task.zero_shot

    def template_sets(self) -> dict[str, list[str]]:
        out = {}
        for task in self.tasks.values():
            label, templates = task.templates
            out[label] = load_templates(templates) if isinstance(templates, (str, os.PathLike)) else list(templates)
        return out

    # ---- linear probes ----------------------------------------------------------------------

    def split(self, name: str) -> dict:
        """Probe arrays: train/val (C search), test, and the test rows' indices into the eval set."""
        task, p = self.task(name), self.config.probe
        if task.split is None:
            x_eval, y_eval = self.probe_features(self.features(name)), task.eval_set.labels
            if task.train_set is not None:
                if task.train_features is None:
                    task.train_features = self._encode(task.train_set)
                x_pool, y_pool, test = self.probe_features(task.train_features), task.train_set.labels, np.arange(len(y_eval))
            else:
                pool, test = stratified_split(y_eval, p.test_fraction, p.seed)
                x_pool, y_pool = x_eval[pool], y_eval[pool]
            train, val = stratified_split(y_pool, p.val_fraction, p.seed + 1)
            if len(val) == 0 or len(test) == 0:
                raise ValueError(
                    f"task {name}: too few images for a linear probe (each class needs at least 2 for "
                    "training + validation and 1 for testing)"
                )
            task.split = {
                "train": (x_pool[train], y_pool[train]), "val": (x_pool[val], y_pool[val]),
                "test": (x_eval[test], y_eval[test]), "test_index": test,
                "source": "train/ and test/ folders" if task.train_set is not None else
                f"stratified {1 - p.test_fraction:.0%}/{p.test_fraction:.0%} split of the set (seed {p.seed})",
            }
        return task.split

    def probes(self, name: str, few_shot: bool = True) -> dict:
        task = self.task(name)
        if task.probes is None or (few_shot and "few_shot" not in task.probes):
            s = self.split(name)
            task.probes = task.probes or {"full": linear_probe(*s["train"], *s["val"], *s["test"], self.config.probe)}
            if few_shot:
                task.probes["few_shot"] = few_shot_curve(
                    *s["train"], *s["val"], *s["test"], self.config.few_shot, self.config.probe,
                    zero_shot_accuracy=self.zero_shot_on_test(name), progress=self.config.progress,
                    desc=f"few-shot {name}",
                )
        return task.probes

    def zero_shot_on_test(self, name: str) -> float:
        _, predictions = self.zero_shot(name)
        s, labels = self.split(name), self.task(name).eval_set.labels
        return accuracy(predictions[s["test_index"]], labels[s["test_index"]])


# ---- the protocols ---------------------------------------------------------------------------


def _zeroshot(suite: Suite) -> dict:
    out = {}
    for name in suite.task_names:
        metrics, predictions = suite.zero_shot(name)
        task = suite.task(name)
        out[name] = {**metrics, "classnames": list(task.eval_set.classnames), "templates": task.templates[0]}
        if metrics["num_classes"] <= 50:  # for the report's confusion-matrix plots
            out[name]["confusion_matrix"] = confusion_matrix(
                predictions, task.eval_set.labels, metrics["num_classes"]).tolist()
        if suite.config.examples_per_class > 0:
            out[name]["examples"] = _examples(suite, name, suite.config.examples_per_class)
    return out


def _examples(suite: Suite, name: str, per_class: int) -> list[dict]:
    """The first ``per_class`` images of each class with their top-3 classes and probabilities.

    Probabilities are a softmax over the task's classes at the model's own learned temperature
    (CLIP's ``logit_scale``; 100 for a model without one), as a user of the model would compute them.
    """
    task = suite.task(name)
    labels = task.eval_set.labels
    rows = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
    scale = getattr(suite.model, "logit_scale", None)
    scale = float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0
    probs = zero_shot_logits(suite.features(name).embeddings[rows], suite.head(name), scale).softmax(dim=-1)
    top = probs.topk(min(3, probs.shape[1]), dim=-1)
    paths = [Path(task.eval_set.paths[i]) for i in rows]
    root = Path(suite.layout.root)
    return [{"image": str(path.relative_to(root) if path.is_relative_to(root) else path), "label": int(labels[i]),
             "top": [[int(c), round(float(p), 4)] for c, p in zip(classes, values)]}
            for path, i, classes, values in zip(paths, rows, top.indices.tolist(), top.values.tolist())]


def _probe_tasks(suite: Suite) -> list[str]:
    return [n for n in suite.task_names if suite.layout.classification[n].shift is None]


def _linear_probe(suite: Suite) -> dict:
    out = {}
    for name in _probe_tasks(suite):
        result = {k: v for k, v in suite.probes(name, few_shot=False)["full"].items() if k != "model"}
        out[name] = {**result, "split": suite.split(name)["source"], "features": suite.config.probe.features}
    return out


def few_shot_tasks(suite: Suite) -> list[str]:
    base = _probe_tasks(suite)
    if suite.config.few_shot_tasks is not None:
        unknown = sorted(set(suite.config.few_shot_tasks) - set(base))
        if unknown:
            raise ValueError(f"few-shot tasks {unknown} are not in-distribution tasks of this run: {base}")
        return [n for n in base if n in suite.config.few_shot_tasks]
    shifted = [n for n in base if n in suite.layout.shift_groups()]
    return shifted or base


def _few_shot(suite: Suite) -> dict:
    out = {}
    for name in few_shot_tasks(suite):
        curve = suite.probes(name)["few_shot"]
        out[name] = {k: v for k, v in curve.items() if k != "models"}
    return out


def _retrieval(suite: Suite) -> dict:
    c = suite.config
    return {
        name: evaluate_retrieval(suite.model, suite.preprocess, suite.tokenizer, load_retrieval_set(path, name),
                                 batch_size=c.batch_size, num_workers=c.num_workers, progress=c.progress)
        for name, path in suite.layout.retrieval.items()
    }


def _robustness(suite: Suite) -> dict:
    out = {}
    for base, shifted in suite.layout.shift_groups().items():
        shifted = [s for s in shifted if s in suite.task_names]
        if base not in suite.task_names or not shifted:
            continue
        probes = suite.probes(base)
        predictors = {"zero-shot": lambda task: suite.zero_shot(task)[1]}
        models = {"linear probe": probes["full"]["model"]}
        models.update({f"{k}-shot probe (seed {s})": m for (k, s), m in probes["few_shot"]["models"].items()})
        for label, model in models.items():
            predictors[label] = lambda task, m=model: m.predict(suite.probe_features(suite.features(task)))
        accuracies = {label: _accuracies(suite, base, shifted, predict) for label, predict in predictors.items()}
        out[base] = robustness_report(accuracies, base, shifted, list(models), ["zero-shot", "linear probe"])
    return out


def _accuracies(suite: Suite, base: str, shifted: Sequence[str], predict: Callable) -> dict[str, float]:
    """Accuracy on the base task's probe test rows and on every row of each shifted task."""
    out = {}
    for task in (base, *shifted):
        labels, predictions = suite.task(task).eval_set.labels, predict(task)
        rows = suite.split(base)["test_index"] if task == base else np.arange(len(labels))
        out[task] = accuracy(predictions[rows], labels[rows])
    return out


def _overlap(suite: Suite) -> dict:
    from clipforge.eval.overlap import run_overlap, sample_training_images

    c, cfg = suite.config.overlap, suite.config
    source = c.train_source or suite.layout.train_source
    items = sample_training_images(source, c.max_train_images, c.seed)

    def encode(dataset, desc):
        return encode_images(suite.model, suite.preprocess, dataset, batch_size=cfg.batch_size,
                             num_workers=cfg.num_workers, progress=cfg.progress, desc=desc)

    evaluations = {
        name: (suite.features(name), suite.zero_shot(name)[1] == suite.task(name).eval_set.labels)
        for name in suite.task_names
    }
    result = run_overlap(encode, items, evaluations, c, suite.preprocess)
    result["pool"]["source"] = str(source)
    return result


_RUNNERS: dict[str, Callable[[Suite], dict]] = {
    "zeroshot": _zeroshot, "linear_probe": _linear_probe, "few_shot": _few_shot,
    "retrieval": _retrieval, "robustness": _robustness, "overlap": _overlap,
}


def _available(layout: DataLayout, config: EvalConfig) -> dict[str, str | None]:
    """Protocol → None when its data is there, else why not."""
    has_tasks = bool(layout.classification)
    return {
        "zeroshot": None if has_tasks else "no classification sets",
        "linear_probe": None if layout.base_tasks() else "no classification sets",
        "few_shot": None if layout.base_tasks() else "no classification sets",
        "retrieval": None if layout.retrieval else "no retrieval set (captions.json or CSV)",
        "robustness": None if layout.shift_groups() else "no shifted sets sharing a label space",
        "overlap": None if (config.overlap.train_source or layout.train_source) and has_tasks
        else "no training source (train/ under the data root, or OverlapConfig.train_source)",
    }


def choose_protocols(suite: str | Sequence[str] | None, layout: DataLayout, config: EvalConfig) -> tuple[list[str], dict]:
    """(protocols to run, {skipped protocol: reason}). Unknown names and asked-for protocols
    without data raise ValueError; by default every protocol with data runs."""
    available = _available(layout, config)
    if suite is None or suite == "all":
        return [p for p in PROTOCOLS if available[p] is None], {p: r for p, r in available.items() if r}
    names = [s.strip() for s in (suite.split(",") if isinstance(suite, str) else suite) if s.strip()]
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocols {unknown}; choose from {', '.join(PROTOCOLS)}")
    missing = {n: available[n] for n in names if available[n]}
    if missing:
        raise ValueError(f"cannot run {missing} on {layout.root}")
    return [p for p in PROTOCOLS if p in names], {}


def _model_info(model: Any, name: str | None) -> dict:
    info: dict = {"name": name or type(model).__name__}
    config = getattr(model, "config", None)
    if hasattr(config, "to_dict"):
        info["config"] = config.to_dict()
    if hasattr(model, "parameters"):
        info["parameters"] = int(sum(p.numel() for p in model.parameters()))
    return info


def run_suite(
    model: Any,
    preprocess: Callable,
    tokenizer: Callable,
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    suite: str | Sequence[str] | None = None,
    config: EvalConfig = EvalConfig(),
    *,
    model_name: str | None = None,
    echo: Callable[[str], Any] | None = print,
) -> dict:
    """Run the protocols (``suite``: names or a comma list; None = all with data) → the report dict.

    Writes ``report.json``, ``report.md`` and plots into ``out_dir`` and, with ``echo``, prints a
    summary table. Every number in the files is in the returned dict.
    """
    layout = discover(data_root)
    protocols, skipped = choose_protocols(suite, layout, config)
    runner = Suite(model, preprocess, tokenizer, layout, config)
    results, timings = {}, {}
    for protocol in protocols:
        start = time.perf_counter()
        results[protocol] = _RUNNERS[protocol](runner)
        timings[protocol] = round(time.perf_counter() - start, 3)
        if config.progress:
            print(f"[eval] {protocol}: {timings[protocol]:.1f} s", file=sys.stderr, flush=True)
    report = {
        "model": _model_info(model, model_name),
        "data_root": str(layout.root),
        "suite": protocols,
        "skipped": skipped,
        "protocols": reporting.protocol_notes(config),
        "template_sets": runner.template_sets(),
        **results,
        "seconds": timings,
    }
    report = reporting.write_report(report, Path(out_dir), plots=config.plots)
    if echo is not None:
        echo(reporting.summary_table(report))
    return report
