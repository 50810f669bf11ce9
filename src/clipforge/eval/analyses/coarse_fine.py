"""The coarse/fine probe (``--suite coarse_fine``): "close" answers and top-1 as the label set grows.

Reproduces two protocols of Radford et al. 2021, §7.2 (Surveillance):

- CCTV images, coarse classes (the scene's main subject, at least 6 options): 91.8% top-1; a
  "stress test" label set that adds a caption close to the right one ('parking lot with white car'
  vs '... red car'): 51.1% top-1, the close caption chosen 40.7% of the time. Here a set with a
  ``hierarchy.json`` (class → coarse class) or ``near_misses.json`` beside it is scored over its own
  (fine) classes as exact / close (a sibling under the same coarse class, or a marked near miss) /
  wrong, and, with a hierarchy, zero-shot over the coarse classes alone (the first evaluation).
- Celebrity identification (Table 8): 59.2% top-1 among 100 names, 43.3% among 1,000 (ViT-L/14).
  Here, for every in-distribution task with enough classes, top-1 when only n classes are offered,
  for growing n: per seed a random class order, the first n classes as the label set and the
  images of those classes, mean and spread over seeds; chance is 1/n.

On the synthetic world the held-out colour × shape pairs have their shape as the coarse class, so
"orange star" for a green star is a close answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipforge.eval.analyses import sidecars, stats
from clipforge.eval.analyses.common import logits_over, single_label_tasks
from clipforge.eval.report import _pct, _table
from clipforge.zeroshot import zero_shot_logits

PAPER = ("Radford et al. 2021, §7.2: coarse 91.8% vs stress test 51.1% exact with 40.7% 'close' answers (CCTV); "
         "Table 8: top-1 among 100 vs 1,000 celebrity names (59.2% vs 43.3%)")


@dataclass(frozen=True)
class CoarseFineConfig:
    class_counts: tuple[int, ...] | None = None  # label-set sizes; None: 2, 4, 8, ... and every class
    seeds: int = 5  # random class orders per size
    min_classes: int = 4  # tasks with fewer classes get no class-count curve
    seed: int = 0


def _close_tasks(layout: Any) -> list[str]:
    return [n for n, spec in layout.classification.items()
            if sidecars.sidecar(spec, sidecars.HIERARCHY_FILE, sidecars.NEAR_MISS_FILE)]


def available(layout: Any, config: Any) -> str | None:
    if _close_tasks(layout) or layout.base_tasks():
        return None
    return "no classification sets"


def run(suite: Any) -> dict:
    c = suite.config.analyses.coarse_fine
    close = {}
    for name in [n for n in single_label_tasks(suite, base_only=False) if n in _close_tasks(suite.layout)]:
        close[name] = close_answers(suite, name)
    curves = {}
    for name in single_label_tasks(suite):
        if len(suite.task(name).eval_set.classnames) >= max(c.min_classes, 2):
            curves[name] = class_count_curve(suite, name, c)
    return {"paper": PAPER, "close_answers": close, "class_count": curves}


def close_answers(suite: Any, name: str) -> dict:
    _, predictions = suite.zero_shot(name)
    data = suite.task(name).eval_set
    close, parents = sidecars.read_close_answers(suite.layout.classification[name], data.classnames)
    out = {"fine": stats.close_answer_rates(predictions, data.labels, close),
           "num_classes": len(data.classnames), "coarse": None}
    if parents is not None:
        coarse = list(dict.fromkeys(parents))
        truth = np.array([coarse.index(parents[label]) for label in data.labels])
        chosen = logits_over(suite, name, coarse).argmax(axis=1)
        out["coarse"] = {"classes": coarse, "accuracy": float(np.mean(chosen == truth)),
                         "fine_in_right_coarse": out["fine"]["exact"] + out["fine"]["close"]}
    return out


def class_count_curve(suite: Any, name: str, config: CoarseFineConfig) -> dict:
    data = suite.task(name).eval_set
    logits = zero_shot_logits(suite.features(name).embeddings, suite.head(name)).numpy()  # [N, C]
    total = len(data.classnames)
    counts = config.class_counts or tuple(sorted({*(2**k for k in range(1, total.bit_length())), total}))
    counts = sorted({n for n in counts if 2 <= n <= total})
    rng = np.random.default_rng([config.seed, total])
    orders = [rng.permutation(total) for _ in range(config.seeds)]
    points = []
    for n in counts:
        runs = [stats.subset_accuracy(logits, data.labels, order[:n]) for order in orders]
        accs = [a for a, images in runs if images]
        points.append({"classes": n, "mean": float(np.mean(accs)), "std": float(np.std(accs)), "accuracies": accs,
                       "images": float(np.mean([images for _, images in runs])), "chance": 1.0 / n})
    return {"points": points, "seeds": config.seeds}


# ---- report --------------------------------------------------------------------------------------


def section(result: dict, report: dict) -> list[str]:
    lines = ["## Coarse and fine labels: close answers, growing label sets", "", f"Reproduces {result['paper']}.", ""]
    if result["close_answers"]:
        rows = [[name, _pct(r["coarse"]["accuracy"]) if r["coarse"] else "–", _pct(r["fine"]["exact"]),
                 _pct(r["fine"]["close"]), _pct(r["fine"]["wrong"]), str(r["fine"]["n"])]
                for name, r in result["close_answers"].items()]
        lines += ["Zero-shot top-1 (%) over the coarse classes, and over the fine classes split into exact, close "
                  "(a sibling under the same coarse class or a marked near miss) and wrong answers.", ""]
        lines += _table(["task", "coarse top-1", "fine: exact", "close", "wrong", "images"], rows) + [""]
    if result["class_count"]:
        counts = sorted({p["classes"] for r in result["class_count"].values() for p in r["points"]})
        rows = [[name, *[next((f"{100 * p['mean']:.1f} ± {100 * p['std']:.1f}" for p in r["points"] if p["classes"] == n), "–")
                         for n in counts]] for name, r in result["class_count"].items()]
        lines += ["Zero-shot top-1 (%, mean ± std over random class orders) when only n classes are offered "
                  "(the images of those classes):", ""]
        lines += _table(["task", *[f"n = {n} (chance {100 / n:.0f})" for n in counts]], rows) + [""]
    return lines


def plot(plt, result: dict, out_dir: Path) -> list[str]:
    from clipforge.eval.plots import finish

    files = []
    if result["close_answers"]:
        fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(result["close_answers"]) + 2), 4))
        names = list(result["close_answers"])
        bottom = np.zeros(len(names))
        for key, colour in (("exact", "C2"), ("close", "C1"), ("wrong", "C3")):
            values = np.array([100 * result["close_answers"][n]["fine"][key] for n in names])
            ax.bar(names, values, bottom=bottom, color=colour, label=f"fine labels: {key}")
            bottom += values
        coarse = [(i, 100 * r["coarse"]["accuracy"]) for i, r in enumerate(result["close_answers"].values()) if r["coarse"]]
        if coarse:
            ax.scatter([i for i, _ in coarse], [v for _, v in coarse], marker="D", color="k", zorder=3,
                       label="coarse labels: top-1")
        ax.set(ylabel="% of images", ylim=(0, 105), title="exact, close and wrong answers")
        ax.tick_params(axis="x", labelrotation=30)
        files.append(finish(plt, fig, ax, out_dir / "close_answers.png"))
    if result["class_count"]:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for i, (name, r) in enumerate(result["class_count"].items()):
            n = np.array([p["classes"] for p in r["points"]])
            mean, std = (np.array([p[k] for p in r["points"]]) * 100 for k in ("mean", "std"))
            ax.plot(n, mean, "o-", color=f"C{i}", label=name)
            ax.fill_between(n, mean - std, mean + std, color=f"C{i}", alpha=0.2)
        counts = np.array(sorted({p["classes"] for r in result["class_count"].values() for p in r["points"]}))
        ax.plot(counts, 100 / counts, "k:", lw=1, label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.set(xlabel="classes offered", ylabel="zero-shot top-1 (%)", ylim=(0, 100),
               title="top-1 as the label set grows")
        files.append(finish(plt, fig, ax, out_dir / "class_count.png"))
    return files
