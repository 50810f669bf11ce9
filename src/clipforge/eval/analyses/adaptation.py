"""Adaptation under distribution shift (``--suite adaptation``): fit to the in-distribution set,
then measure what it does on every shifted set, beside the zero-shot classifier.

Reproduces Radford et al. 2021, §3.3, Figure 14: an L2-regularized logistic regression fit to CLIP
features on ImageNet's training set raises ImageNet accuracy by 9.2% (to 85.4%), yet average
accuracy under distribution shift slightly decreases: it rises on ImageNetV2 and falls by 4.7% on
ImageNet-R, 3.8% on ObjectNet, 2.8% on ImageNet Sketch and 1.9% on ImageNet-A. Two adapted
classifiers are compared with the zero-shot one, each on the in-distribution test rows and every
shifted set:

- ``linear probe``: the paper's adaptation, the ``linear_probe`` protocol's classifier (L-BFGS
  logistic regression on the probe features, C by the paper's search, Appendix A.3);
- ``zero-shot initialised``: the zero-shot head itself (a logistic regression on normalized
  embeddings with the model's temperature, §3.1.2) trained further on the in-distribution split,
  starting from the head, with an L2 penalty λ·‖W − head‖² pulling it back; λ chosen on the
  validation split (the ties to the larger λ, the classifier nearer zero-shot). §3.1.5 notes that
  such a prior tends to be tuned so strongly that the result is "just" the zero-shot classifier.

The report gives each classifier's in-distribution gain over zero-shot and its change on each
shifted set and on their average.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clipforge.eval.metrics import accuracy
from clipforge.eval.protocols import _accuracies, predict_in
from clipforge.eval.report import _pct, _table

PAPER = ("Radford et al. 2021, §3.3, Figure 14: adapting to ImageNet with a logistic regression on CLIP features "
         "gains 9.2% on ImageNet while average accuracy under shift slightly decreases")
LAMBDAS = tuple(10.0**k for k in range(-6, 3))  # penalty strengths tried for the zero-shot-initialised fit


@dataclass(frozen=True)
class AdaptationConfig:
    lambdas: tuple[float, ...] = LAMBDAS
    max_iter: int = 100  # L-BFGS iterations of the zero-shot-initialised fit (the problem is convex for λ > 0)


def available(layout: Any, config: Any) -> str | None:
    return None if layout.shift_groups() else "no shifted sets sharing a label space"


class HeadClassifier:
    """A linear classifier on normalized embeddings: logits = scale · x̂ Wᵀ + b (W [C, D], b [C])."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, scale: float):
        self.weight, self.bias, self.scale = weight, bias, scale
        self.classes_ = np.arange(weight.shape[0])

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        x = F.normalize(torch.as_tensor(np.asarray(x), dtype=torch.float32), dim=-1)
        return (self.scale * x @ self.weight.t() + self.bias).numpy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.decision_function(x).argmax(axis=1)


def fit_from_head(x: np.ndarray, y: np.ndarray, head: torch.Tensor, scale: float, lam: float,
                  max_iter: int = 100) -> HeadClassifier:
    """Minimize mean cross-entropy + λ·‖W − head‖² from W = head, b = 0 (full-batch L-BFGS).

    ``x`` [N, D] embeddings (normalized here), ``y`` [N] labels into the head's classes, ``head`` [C, D].
    One intra-op thread, as the linear probe's BLAS: these problems are small, and threads only add
    synchronisation to each of L-BFGS's many tiny steps.
    """
    x_t = F.normalize(torch.as_tensor(np.asarray(x), dtype=torch.float32), dim=-1)
    y_t = torch.as_tensor(np.asarray(y), dtype=torch.long)
    head = head.detach().float()
    delta = torch.zeros_like(head, requires_grad=True)
    bias = torch.zeros(head.shape[0], requires_grad=True)
    optimizer = torch.optim.LBFGS([delta, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(scale * x_t @ (head + delta).t() + bias, y_t) + lam * delta.square().sum()
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        optimizer.step(closure)
    finally:
        torch.set_num_threads(threads)
    return HeadClassifier((head + delta).detach(), bias.detach(), scale)


def search_lambda(train: tuple, val: tuple, head: torch.Tensor, scale: float, config: AdaptationConfig) -> tuple[float, list]:
    """The λ with the best validation accuracy (ties: the largest λ, nearest the zero-shot head)."""
    trace = []
    for lam in config.lambdas:
        model = fit_from_head(*train, head, scale, lam, config.max_iter)
        trace.append({"lambda": lam, "val_accuracy": accuracy(model.predict(val[0]), val[1])})
    best = max(trace, key=lambda t: (t["val_accuracy"], t["lambda"]))
    return best["lambda"], trace


def zero_shot_initialised(suite: Any, base: str) -> tuple[HeadClassifier, dict]:
    """The zero-shot head trained further on the base task's probe split (embeddings, not probe features)."""
    c = suite.config.analyses.adaptation
    split = suite.split(base)
    rows = split["rows"]
    pool = suite.train_features(base) if rows["pool"] == "train" else suite.features(base)
    labels = (suite.task(base).train_set if rows["pool"] == "train" else suite.task(base).eval_set).labels
    x = pool.embeddings.numpy()
    train, val = (x[rows["train"]], labels[rows["train"]]), (x[rows["val"]], labels[rows["val"]])
    head, scale = suite.head(base), _temperature(suite.model)
    lam, trace = search_lambda(train, val, head, scale, c)
    model = fit_from_head(np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]]), head, scale, lam, c.max_iter)
    return model, {"lambda": lam, "search": trace, "temperature": scale}


def _temperature(model: Any) -> float:
    """The model's learned logit scale exp(t) (the zero-shot classifier's temperature); 100 without one."""
    scale = getattr(model, "logit_scale", None)
    return float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0


def run(suite: Any) -> dict:
    out = {}
    for base, shifted in suite.layout.shift_groups().items():
        shifted = [s for s in shifted if s in suite.task_names]
        if base not in suite.task_names or not shifted or suite.task(base).eval_set.multilabel:
            continue
        probe = suite.probes(base, few_shot=False)["full"]["model"]
        initialised, details = zero_shot_initialised(suite, base)
        features = {"linear probe": suite.probe_features, "zero-shot initialised": lambda f: f.embeddings.numpy()}
        predictors = {"zero-shot": lambda task: suite.zero_shot(task)[1]}
        for label, model in (("linear probe", probe), ("zero-shot initialised", initialised)):
            predictors[label] = lambda task, m=model, f=features[label]: predict_in(
                m, f(suite.features(task)), suite.layout.classification[task].subset)
        accuracies = {label: _accuracies(suite, base, shifted, p) for label, p in predictors.items()}
        out[base] = _changes(accuracies, base, shifted)
        out[base]["zero_shot_initialised"] = details
    return {"paper": PAPER, "tasks": out}


def _changes(accuracies: dict[str, dict[str, float]], base: str, shifted: list[str]) -> dict:
    """Per classifier: accuracy per set, its change from zero-shot, the average over shifted sets."""
    zero_shot = accuracies["zero-shot"]
    out = {"in_distribution": base, "shifted": shifted, "classifiers": {}}
    for label, acc in accuracies.items():
        average = float(np.mean([acc[s] for s in shifted]))
        out["classifiers"][label] = {
            "accuracy": acc, "average_shifted": average,
            "change": {s: acc[s] - zero_shot[s] for s in (base, *shifted)},
            "average_shifted_change": average - float(np.mean([zero_shot[s] for s in shifted])),
        }
    return out


def section(result: dict, report: dict) -> list[str]:
    lines = ["## Adaptation to the in-distribution set, and what it does under shift", "", f"Reproduces {result['paper']}. "
             "Accuracy (%) and change from zero-shot (points) on the in-distribution test rows and each shifted set.", ""]
    for base, r in result["tasks"].items():
        sets = [base, *r["shifted"]]
        rows = [[label, *[f"{_pct(c['accuracy'][s])} ({100 * c['change'][s]:+.1f})" for s in sets],
                 f"{_pct(c['average_shifted'])} ({100 * c['average_shifted_change']:+.1f})"]
                for label, c in r["classifiers"].items()]
        lam = r["zero_shot_initialised"]["lambda"]
        lines += [f"`{base}` (zero-shot initialised: λ = {lam:g} chosen on validation, temperature "
                  f"{r['zero_shot_initialised']['temperature']:.1f}):", ""]
        lines += _table(["classifier", *sets, "average shifted"], rows) + [""]
    return lines


def plot(plt, result: dict, out_dir: Path) -> list[str]:
    """Per base task, the change from zero-shot on every set (the paper's Figure 14, right)."""
    from clipforge.eval.plots import finish

    files = []
    for base, r in result["tasks"].items():
        sets = [base, *r["shifted"], "average shifted"]
        adapted = [label for label in r["classifiers"] if label != "zero-shot"]
        fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(sets) + 2), 4))
        y = np.arange(len(sets))
        height = 0.8 / max(len(adapted), 1)
        for i, label in enumerate(adapted):
            c = r["classifiers"][label]
            values = [100 * c["change"][s] for s in sets[:-1]] + [100 * c["average_shifted_change"]]
            ax.barh(y + (i - (len(adapted) - 1) / 2) * height, values, height, color=f"C{i}", label=label)
        ax.axvline(0, color="k", lw=1)
        ax.set_yticks(y, [f"{s} (in distribution)" if s == base else s for s in sets], fontsize=8)
        ax.invert_yaxis()
        ax.set(xlabel="change in accuracy from zero-shot (points)", title=f"adapting to {base}")
        files.append(finish(plt, fig, ax, out_dir / f"adaptation_{base}.png"))
    return files

