"""The evaluation protocols, one registry: name → (runner over a Suite, when its data is there).

A protocol is a :class:`Protocol`: ``run(suite) -> dict`` (JSON-ready results, usually keyed by
task) and ``available(layout, config) -> None | str`` (None when it can run, else why not), and
optionally its own report section (``section(result, report) -> markdown lines``) and plots
(``plot(plt, result, out_dir) -> PNG paths``). :data:`REGISTRY` holds them in report order;
:func:`register` adds one (a new evaluation suite is one function and one ``register`` call).
Protocols with ``default=False`` (the paper's further analyses, :mod:`clipforge.eval.analyses`)
run only when asked for by name or with ``all``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from clipforge.eval.datasets import ShardMember
from clipforge.eval.layout import DataLayout
from clipforge.eval.metrics import accuracy, confusion_matrix
from clipforge.eval.retrieval import score_retrieval, encode_captions
from clipforge.eval.robustness import robustness_report
from clipforge.zeroshot import zero_shot_logits


@dataclass(frozen=True)
class Protocol:
    name: str
    run: Callable  # (Suite) -> dict
    available: Callable[[DataLayout, object], str | None]
    section: Callable[[dict, dict], list[str]] | None = None  # (its result, the report) -> report.md lines
    plot: Callable | None = None  # (pyplot, its result, out_dir) -> PNG paths
    default: bool = True  # runs when no suite is named


REGISTRY: dict[str, Protocol] = {}


def register(protocol: Protocol) -> Protocol:
    REGISTRY[protocol.name] = protocol
    return protocol


def _zeroshot(suite) -> dict:
    out = {}
    for name in suite.task_names:
        metrics, predictions = suite.zero_shot(name)
        task = suite.task(name)
        out[name] = {**metrics, "classnames": list(task.eval_set.classnames), "templates": task.templates[0]}
        if not task.eval_set.multilabel and metrics["num_classes"] <= 50:  # for the confusion-matrix plots
            out[name]["confusion_matrix"] = confusion_matrix(
                predictions, task.eval_set.labels, metrics["num_classes"]).tolist()
        if not task.eval_set.multilabel and suite.config.examples_per_class > 0:
            out[name]["examples"] = _examples(suite, name, suite.config.examples_per_class)
    return out


def _examples(suite, name: str, per_class: int) -> list[dict]:
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
    root = Path(suite.layout.root)
    return [{"image": _image_ref(task.eval_set.paths[i], root), "label": int(labels[i]),
             "top": [[int(c), round(float(p), 4)] for c, p in zip(classes, values)]}
            for i, classes, values in zip(rows, top.indices.tolist(), top.values.tolist())]


def _image_ref(item, root: Path) -> str | dict:
    """Where an example image is: a file path (relative to the data root when inside it), or for an
    image inside a webdataset shard its shard, byte offset, size and key."""
    if isinstance(item, ShardMember):
        return {"shard": _relative(Path(item.shard), root), "offset": item.offset, "size": item.size, "key": item.key}
    return _relative(Path(item), root)


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root) if path.is_relative_to(root) else path)


def _probe_tasks(suite) -> list[str]:
    names = [n for n in suite.task_names if suite.layout.classification[n].shift is None]
    single = [n for n in names if not suite.task(n).eval_set.multilabel]
    for n in sorted(set(names) - set(single)):
        suite.notes[f"{n}: probes"] = "multi-label set: no linear or few-shot probe"
    return single


def _linear_probe(suite) -> dict:
    out = {}
    for name in _probe_tasks(suite):
        result = {k: v for k, v in suite.probes(name, few_shot=False)["full"].items() if k != "model"}
        out[name] = {**result, "split": suite.split(name)["source"], "features": suite.config.probe.features}
    return out


def few_shot_tasks(suite) -> list[str]:
    base = _probe_tasks(suite)
    if suite.config.few_shot_tasks is not None:
        unknown = sorted(set(suite.config.few_shot_tasks) - set(base))
        if unknown:
            raise ValueError(f"few-shot tasks {unknown} are not in-distribution tasks of this run: {base}")
        return [n for n in base if n in suite.config.few_shot_tasks]
    shifted = [n for n in base if n in suite.layout.shift_groups()]
    return shifted or base


def _few_shot(suite) -> dict:
    out = {}
    for name in few_shot_tasks(suite):
        curve = suite.probes(name)["few_shot"]
        out[name] = {k: v for k, v in curve.items() if k != "models"}
    return out


def _retrieval(suite) -> dict:
    out = {}
    for name, spec in suite.layout.retrieval.items():
        features, data = suite.encode(spec.load(), name)
        texts = encode_captions(suite.model, suite.tokenizer, data.captions, suite.config.batch_size)
        out[name] = score_retrieval(features.embeddings, texts, data.caption_image)
    return out


def predict_in(model, x: np.ndarray, subset: tuple[tuple[int, ...], ...] | None) -> np.ndarray:
    """A probe's predictions [N] in a shifted set's label space: over all its classes, or (with a
    ``subset``: per shifted class the base labels it covers) the best-scored covered label's class,
    as ImageNet-A/R and ObjectNet are scored with ImageNet classifiers (Taori et al. 2020)."""
    if subset is None:
        return model.predict(x)
    if not hasattr(model, "decision_function"):  # a one-class probe: its class, if the subset covers it
        label = int(model.predict(x[:1])[0])
        hit = next((c for c, labels in enumerate(subset) if label in labels), -1)
        return np.full(len(x), hit, dtype=np.int64)
    scores = model.decision_function(x)  # [N, classes seen in training]
    columns = {int(c): i for i, c in enumerate(model.classes_)}
    out = np.full((len(x), len(subset)), -np.inf)
    for c, labels in enumerate(subset):
        cols = [columns[label] for label in labels if label in columns]
        if cols:
            out[:, c] = scores[:, cols].max(axis=1)
    return out.argmax(axis=1)


def _robustness(suite) -> dict:
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
            predictors[label] = lambda task, m=model: predict_in(
                m, suite.probe_features(suite.features(task)), suite.layout.classification[task].subset)
        accuracies = {label: _accuracies(suite, base, shifted, predict) for label, predict in predictors.items()}
        out[base] = robustness_report(accuracies, base, shifted, list(models), ["zero-shot", "linear probe"])
    return out


def _accuracies(suite, base: str, shifted: Sequence[str], predict: Callable) -> dict[str, float]:
    """Accuracy on the base task's probe test rows and on every row of each shifted task."""
    out = {}
    for task in (base, *shifted):
        predictions = predict(task)
        labels = suite.task(task).eval_set.labels
        rows = suite.split(base)["test_index"] if task == base else np.arange(len(labels))
        out[task] = accuracy(predictions[rows], labels[rows])
    return out


def _overlap(suite) -> dict:
    from clipforge.eval.datasets import encode_images
    from clipforge.eval.overlap import run_overlap, sample_training_images

    c, cfg = suite.config.overlap, suite.config
    source = c.train_source or suite.layout.train_source
    items = sample_training_images(source, c.max_train_images, c.seed)

    def encode(dataset, desc):
        return encode_images(suite.model, suite.preprocess, dataset, batch_size=cfg.batch_size,
                             num_workers=cfg.num_workers, progress=cfg.progress, desc=desc)

    evaluations = {}
    for name in suite.task_names:
        if not suite.task(name).eval_set.multilabel:
            correct = suite.zero_shot(name)[1] == suite.task(name).eval_set.labels
            evaluations[name] = (suite.features(name), correct)
    result = run_overlap(encode, items, evaluations, c, suite.preprocess)
    result["pool"]["source"] = str(source)
    return result


def _has_tasks(layout: DataLayout, config) -> str | None:
    return None if layout.classification else "no classification sets"


def _has_base_tasks(layout: DataLayout, config) -> str | None:
    return None if layout.base_tasks() else "no classification sets"


for _protocol in (
    Protocol("zeroshot", _zeroshot, _has_tasks),
    Protocol("linear_probe", _linear_probe, _has_base_tasks),
    Protocol("few_shot", _few_shot, _has_base_tasks),
    Protocol("retrieval", _retrieval, lambda layout, config: None if layout.retrieval
             else "no retrieval set (captions.json, a CSV, or a CLIP_benchmark retrieval webdataset)"),
    Protocol("robustness", _robustness, lambda layout, config: None if layout.shift_groups()
             else "no shifted sets sharing a label space"),
    Protocol("overlap", _overlap, lambda layout, config: None if (config.overlap.train_source or layout.train_source)
             and layout.classification else "no training source (train/ under the data root, or OverlapConfig.train_source)"),
):
    register(_protocol)

PROTOCOLS = tuple(REGISTRY)  # the built-in protocols, in report order

from clipforge.eval import analyses as _analyses  # noqa: E402,F401  (registers the paper's further analyses)


def choose_protocols(suite: str | Sequence[str] | None, layout: DataLayout, config) -> tuple[list[str], dict]:
    """(protocols to run, {skipped protocol: reason}). Unknown names and asked-for protocols
    without data raise ValueError; by default every default protocol with data runs (``all``:
    every protocol with data)."""
    if suite is None or suite == "all":
        chosen = [name for name, p in REGISTRY.items() if suite == "all" or p.default]
        available = {name: REGISTRY[name].available(layout, config) for name in chosen}
        return [p for p in chosen if available[p] is None], {p: r for p, r in available.items() if r}
    available = {name: p.available(layout, config) for name, p in REGISTRY.items()}
    names = [s.strip() for s in (suite.split(",") if isinstance(suite, str) else suite) if s.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown protocols {unknown}; choose from {', '.join(REGISTRY)}")
    missing = {n: available[n] for n in names if available[n]}
    if missing:
        raise ValueError(f"cannot run {missing} on {layout.root}")
    return [p for p in REGISTRY if p in names], {}
