"""PNG plots of a suite report (matplotlib with the Agg backend: no display needed)."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np

MAX_CLASSES_PLOTTED = 30


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(plt, fig, path: Path, dpi: int = 100) -> str:
    """Tight layout; save ``fig`` as the PNG ``path`` (whole or not at all) and close it."""
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, dpi=dpi, format="png")
    os.replace(tmp, path)
    plt.close(fig)
    return str(path)


def finish(plt, fig, ax, path: Path, legend_loc: str = "best", dpi: int = 100) -> str:
    """Grid and legend on ``ax``, then :func:`save`."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc=legend_loc)
    return save(plt, fig, path, dpi)


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def make_plots(report: dict, out_dir: Path) -> list[str]:
    """Draw every plot the report has data for; returns the file names (relative to out_dir)."""
    plt = _pyplot()
    files = []
    if report.get("few_shot"):
        files.append(few_shot_plot(plt, report["few_shot"], out_dir / "few_shot.png"))
    for base, result in report.get("robustness", {}).items():
        files.append(robustness_plot(plt, base, result, out_dir / f"robustness_{base}.png"))
    zero_shot = {t: r for t, r in report.get("zeroshot", {}).items()
                 if r["num_classes"] <= MAX_CLASSES_PLOTTED and not r.get("multilabel")}
    if zero_shot:
        files.append(per_class_plot(plt, zero_shot, out_dir / "per_class_recall.png"))
    for task, result in zero_shot.items():
        if "confusion_matrix" in result:
            files.append(confusion_plot(plt, task, result, out_dir / f"confusion_{task}.png"))
    from clipforge.eval.protocols import REGISTRY

    for name in report.get("suite", []):  # plots that protocols bring with them (the paper's analyses)
        protocol = REGISTRY.get(name)
        if protocol is not None and protocol.plot is not None and report.get(name):
            files += protocol.plot(plt, report[name], out_dir)
    return [Path(f).name for f in files]


def _grid(plt, n: int, size: float = 3.6):
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


def few_shot_plot(plt, few_shot: dict, path: Path) -> str:
    """Accuracy against shots (mean ± std), the zero-shot accuracy as a horizontal line (Figure 6)."""
    fig, axes = _grid(plt, len(few_shot))
    for ax, (task, result) in zip(axes, few_shot.items()):
        k = np.array([p["shots"] for p in result["points"]])
        mean = np.array([p["mean"] for p in result["points"]]) * 100
        std = np.array([p["std"] for p in result["points"]]) * 100
        ax.plot(k, mean, "o-", label="linear probe")
        ax.fill_between(k, mean - std, mean + std, alpha=0.25)
        if result.get("zero_shot_accuracy") is not None:
            ax.axhline(100 * result["zero_shot_accuracy"], color="C3", ls="--", label="zero-shot")
            worth = result.get("zero_shot_worth") or {}
            if worth.get("shots"):
                ax.axvline(worth["shots"], color="C3", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(k, [str(v) for v in k])
        ax.set(title=task, xlabel="labelled examples per class", ylabel="accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(plt, fig, path)


def _logit_pct(p):
    p = np.clip(np.asarray(p, dtype=float), 1e-3, 1 - 1e-3)
    return np.log(p / (1 - p))


def robustness_plot(plt, base: str, result: dict, path: Path) -> str:
    """In-distribution vs average shifted accuracy on logit axes: probes, their trend, zero-shot, y = x."""
    fig, ax = plt.subplots(figsize=(5, 5))
    points = result["points"]
    probes = [v for name, v in points.items() if name != "zero-shot"]
    xs, ys = [p["id"] for p in probes], [p["shifted"] for p in probes]
    ax.scatter(_logit_pct(xs), _logit_pct(ys), c="grey", s=18, label="linear probes (adapted)")
    grid = np.linspace(0.01, 0.99, 99)
    ax.plot(_logit_pct(grid), _logit_pct(grid), "k--", lw=1, label="y = x")
    trend = result["trend"]["average_shifted"]
    if trend is not None:
        ax.plot(_logit_pct(grid), trend["slope"] * _logit_pct(grid) + trend["intercept"], "C0-", lw=1, label="probe trend")
    if "linear probe" in points:
        lp = points["linear probe"]
        ax.scatter(_logit_pct([lp["id"]]), _logit_pct([lp["shifted"]]), marker="s", s=60, c="C0", label="full linear probe")
    zs = points["zero-shot"]
    ax.scatter(_logit_pct([zs["id"]]), _logit_pct([zs["shifted"]]), marker="*", s=250, c="C3", label="zero-shot")
    ticks = np.array([0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99])
    ax.set_xticks(_logit_pct(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_yticks(_logit_pct(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set(xlabel=f"{base} accuracy (%, logit scale)", ylabel="average shifted accuracy (%, logit scale)",
           title=f"effective robustness: {base}")
    return finish(plt, fig, ax, path, legend_loc="upper left")


def per_class_plot(plt, zero_shot: dict, path: Path) -> str:
    fig, axes = _grid(plt, len(zero_shot))
    for ax, (task, result) in zip(axes, zero_shot.items()):
        recall = np.nan_to_num(np.array(result["per_class_recall"], dtype=float)) * 100
        ax.barh(range(len(recall)), recall, color="C0")
        ax.set_yticks(range(len(recall)), result["classnames"], fontsize=7)
        ax.axvline(100 / result["num_classes"], color="k", ls=":", lw=1)
        ax.invert_yaxis()
        ax.set(title=f"{task}: zero-shot recall per class", xlabel="recall (%)", xlim=(0, 100))
    return save(plt, fig, path)


def confusion_plot(plt, task: str, result: dict, path: Path) -> str:
    cm = np.array(result["confusion_matrix"], dtype=float)
    cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(cm)
    fig, ax = plt.subplots(figsize=(2 + 0.4 * n, 1.5 + 0.4 * n))
    image = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    names = result["classnames"]
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=f"{task}: zero-shot confusion (row-normalized)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    with warnings.catch_warnings():  # very long class names cannot always fit; the plot is still drawn
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)
