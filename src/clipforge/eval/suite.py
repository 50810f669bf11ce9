"""The evaluation suite: every protocol over a data layout, each image set encoded once and shared.

``run_suite(model, preprocess, tokenizer, data_root, out_dir)`` finds the sets
(:mod:`clipforge.eval.layout`; or takes a prepared :class:`DataLayout`, e.g. named datasets from
:mod:`clipforge.eval.named`), runs the chosen protocols (:mod:`clipforge.eval.protocols`) over
one :class:`Suite`, which computes each set's image features once for zero-shot, the probes,
few-shot, robustness and overlap, and writes ``report.json``, ``report.md``, PNG plots and one
CLIP_benchmark-schema JSON per (dataset, task) into ``out_dir``; it returns the report as a dict.

Images that cannot be read are skipped and counted per set (``skipped_images`` in the report);
above ``EvalConfig.max_skipped_fraction`` of a set the run stops with an error naming examples.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from clipforge.eval import report as reporting
from clipforge.eval.analyses import AnalysisConfig
from clipforge.eval.datasets import ClassificationSet, ImageFeatures, encode_images
from clipforge.eval.few_shot import FewShotConfig, few_shot_curve
from clipforge.eval.layout import DataLayout, discover
from clipforge.eval.linear_probe import ProbeConfig, linear_probe, stratified_split
from clipforge.eval.metrics import accuracy
from clipforge.eval.overlap import OverlapConfig
from clipforge.eval.protocols import PROTOCOLS, REGISTRY, choose_protocols
from clipforge.eval.zero_shot import score_zero_shot, score_zero_shot_multilabel
from clipforge.zeroshot import build_classifier, load_templates

__all__ = ["PROTOCOLS", "EvalConfig", "Suite", "choose_protocols", "run_protocols", "run_suite"]


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 256
    num_workers: int = 0
    templates: str | None = None  # set name or file; None: each task's own (manifest, zoo, set), else openai_imagenet
    tasks: tuple[str, ...] | None = None  # classification tasks to use (None: all found)
    # Few-shot curves cost ~16 probe fits per (k, seed): by default only the in-distribution tasks
    # that have shifted versions (robustness needs their probes anyway), else every base task.
    few_shot_tasks: tuple[str, ...] | None = None
    cache_dir: str | None = None  # zero-shot head cache; None: no cache
    examples_per_class: int = 2  # images per class kept with their top-3 classes (the HTML report's grid)
    progress: bool = True
    plots: bool = True
    max_skipped_fraction: float = 0.01  # unreadable images tolerated per set, as the training loader's error budget
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    few_shot: FewShotConfig = field(default_factory=FewShotConfig)
    overlap: OverlapConfig = field(default_factory=OverlapConfig)
    analyses: AnalysisConfig = field(default_factory=AnalysisConfig)  # bias, coarse_fine, scaling, adaptation


@dataclass
class _Task:
    """One classification task's data, features and split (filled on first use)."""

    eval_set: ClassificationSet
    train_set: ClassificationSet | None
    templates: tuple[str, Any]  # (label, templates: a set name/file, a tuple, or {class: prompts})
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
        self.skipped: dict[str, list[dict]] = {}  # set name → samples left out (reading + decoding)
        self.timings: dict[str, dict] = {}  # set name → {"images", "seconds", "images_per_second"}
        self.notes: dict[str, str] = {}
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
                templates = (spec.templates_label or f"{name} (manifest)", spec.templates)
            else:
                templates = ("openai_imagenet", "openai_imagenet")
            self.tasks[name] = _Task(eval_set, train_set, templates)
        return self.tasks[name]

    def encode(self, dataset, name: str) -> tuple[ImageFeatures, Any]:
        """Features of a set's images and the set restricted to the images that could be read."""
        c, start = self.config, time.perf_counter()
        features = encode_images(self.model, self.preprocess, dataset.paths, batch_size=c.batch_size,
                                 num_workers=c.num_workers, progress=c.progress, desc=name)
        seconds = time.perf_counter() - start
        self.timings[name] = {"images": len(dataset.paths), "seconds": round(seconds, 3),
                              "images_per_second": round(len(dataset.paths) / max(seconds, 1e-9), 2)}
        if c.progress:
            print(f"[eval] {name}: {len(dataset.paths)} images in {seconds:.1f} s "
                  f"({self.timings[name]['images_per_second']:.1f} images/s)", file=sys.stderr, flush=True)
        skipped = list(dataset.skipped) + list(features.skipped)
        if skipped:
            self.skipped[name] = skipped
            total = len(dataset.paths) + len(dataset.skipped)
            if len(skipped) > c.max_skipped_fraction * total:
                examples = "; ".join(f"{s.get('image') or s.get('shard')}{':' + s['key'] if s.get('key') else ''}: "
                                     f"{s['reason']}" for s in skipped[:3])
                raise ValueError(f"set {name}: {len(skipped)} of {total} images unreadable, more than "
                                 f"{c.max_skipped_fraction:.0%} ({examples})")
        if features.kept is not None:
            dataset = dataset.subset(features.kept)
        return features, dataset

    def features(self, name: str) -> ImageFeatures:
        task = self.task(name)
        if task.features is None:
            task.features, task.eval_set = self.encode(task.eval_set, name)
        return task.features

    def train_features(self, name: str) -> ImageFeatures:
        task = self.task(name)
        if task.train_features is None:
            task.train_features, task.train_set = self.encode(task.train_set, f"{name}/train")
        return task.train_features

    def probe_features(self, features: ImageFeatures) -> np.ndarray:
        kind = self.config.probe.features
        if kind not in ("pre_projection", "embedding"):
            raise ValueError(f"probe features must be 'pre_projection' or 'embedding', not {kind!r}")
        return (features.pre_projection if kind == "pre_projection" else features.embeddings).numpy()

    # ---- zero-shot ------------------------------------------------------------------------

    def templates_of(self, name: str) -> Any:
        """A task's templates, ready for build_classifier (a list, or {class name: [prompts]})."""
        _, templates = self.task(name).templates
        if isinstance(templates, (str, os.PathLike)):
            return load_templates(templates)
        return dict(templates) if isinstance(templates, dict) else list(templates)

    def head(self, name: str) -> torch.Tensor:
        task = self.task(name)
        templates = self.templates_of(name)
        key = (task.eval_set.classnames, json.dumps(templates, sort_keys=True))
        if key not in self.heads:
            self.heads[key] = build_classifier(
                self.model, self.tokenizer, task.eval_set.classnames, templates,
                batch_size=self.config.batch_size, cache_dir=self.config.cache_dir,
            )
        return self.heads[key]

    def zero_shot(self, name: str) -> tuple[dict, np.ndarray]:
        task = self.task(name)
        if task.zero_shot is None:
            features = self.features(name)
            labels, head = task.eval_set.labels, self.head(name)
            score = score_zero_shot_multilabel if task.eval_set.multilabel else score_zero_shot
            task.zero_shot = score(features.embeddings, labels, head)
        return task.zero_shot

    def template_sets(self) -> dict[str, Any]:
        return {task.templates[0]: self.templates_of(name) for name, task in self.tasks.items()}

    # ---- linear probes ----------------------------------------------------------------------

    def split(self, name: str) -> dict:
        """Probe arrays: train/val (C search), test, and the test rows' indices into the eval set."""
        task, p = self.task(name), self.config.probe
        if task.split is None:
            if task.eval_set.multilabel:
                raise ValueError(f"task {name}: a multi-label set has no linear probe here (nor in CLIP_benchmark)")
            x_eval = self.probe_features(self.features(name))
            y_eval = task.eval_set.labels
            if task.train_set is not None:
                x_pool, y_pool = self.probe_features(self.train_features(name)), task.train_set.labels
                pool, test = np.arange(len(y_pool)), np.arange(len(y_eval))
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
                # rows of the pool set (the train split, else the evaluation set) the probe trains on
                "rows": {"pool": "train" if task.train_set is not None else "eval", "train": pool[train], "val": pool[val]},
                "source": "train and test splits" if task.train_set is not None else
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


def _model_info(model: Any, name: str | None) -> dict:
    info: dict = {"name": name or type(model).__name__}
    config = getattr(model, "config", None)
    if hasattr(config, "to_dict"):
        info["config"] = config.to_dict()
    if hasattr(model, "parameters"):
        info["parameters"] = int(sum(p.numel() for p in model.parameters()))
    return info


def run_protocols(runner: Suite, protocols: Sequence[str]) -> tuple[dict, dict]:
    """Each protocol's results and seconds, in order."""
    results, timings = {}, {}
    for protocol in protocols:
        start = time.perf_counter()
        results[protocol] = REGISTRY[protocol].run(runner)
        timings[protocol] = round(time.perf_counter() - start, 3)
        if runner.config.progress:
            print(f"[eval] {protocol}: {timings[protocol]:.1f} s", file=sys.stderr, flush=True)
    return results, timings


def run_suite(
    model: Any,
    preprocess: Callable,
    tokenizer: Callable,
    data_root: str | os.PathLike | DataLayout,
    out_dir: str | os.PathLike,
    suite: str | Sequence[str] | None = None,
    config: EvalConfig = EvalConfig(),
    *,
    model_name: str | None = None,
    cb_identity: tuple[str, str] | None = None,
    results_dir: str | os.PathLike | None = None,
    notes: dict | None = None,
    echo: Callable[[str], Any] | None = print,
) -> dict:
    """Run the protocols (``suite``: names or a comma list; None = all with data) → the report dict.

    Writes ``report.json``, ``report.md``, plots and CLIP_benchmark-schema results
    (``clip_benchmark/``, naming the model ``cb_identity`` = (model, pretrained); default
    :func:`clipforge.eval.cb_results.identity` of ``model_name``; in ``results_dir`` when given)
    into ``out_dir`` and, with
    ``echo``, prints a summary table. Every number in the files is in the returned dict.
    """
    from clipforge.eval.cb_results import cb_records, identity, write_records

    layout = data_root if isinstance(data_root, DataLayout) else discover(data_root)
    protocols, skipped = choose_protocols(suite, layout, config)
    runner = Suite(model, preprocess, tokenizer, layout, config)
    runner.notes.update(notes or {})
    results, timings = run_protocols(runner, protocols)
    report = {
        "model": _model_info(model, model_name),
        "data_root": str(layout.root),
        "suite": protocols,
        "skipped": skipped,
        "protocols": reporting.protocol_notes(config),
        "template_sets": runner.template_sets(),
        **results,
        "skipped_images": {k: {"count": len(v), "examples": v[:20]} for k, v in runner.skipped.items()},
        "notes": runner.notes,
        "image_pass": runner.timings,
        "seconds": timings,
    }
    report = reporting.clean(report)
    cb_model, cb_pretrained = cb_identity or identity(model_name or report["model"]["name"])
    report["clip_benchmark_results"] = write_records(
        cb_records(report, cb_model, cb_pretrained), Path(results_dir or Path(out_dir) / "clip_benchmark"))
    report = reporting.write_report(report, Path(out_dir), plots=config.plots)
    if echo is not None:
        echo(reporting.summary_table(report))
    return report
