"""Plots of a benchmark grid (matplotlib, Agg): zero-shot vs linear probe, and bars per dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clipforge.eval.plots import _pyplot, finish


def make_plots(grid, rows: list[dict], out: Path) -> list[str]:
    """Write every plot the rows have data for; returns the file names (relative to ``out``)."""
    plt = _pyplot()
    files = []
    by = {(r["model"], r["dataset"], r["task"]): r["main"] for r in rows if r["main"] is not None}
    names = [d.name for d in grid.datasets]
    pairs = {m: [(d, by[(m, d, "linear_probe")], by[(m, d, "zeroshot_classification")]) for d in names
                 if (m, d, "linear_probe") in by and (m, d, "zeroshot_classification") in by] for m in grid.models}
    if any(pairs.values()):
        files.append(scatter_plot(plt, pairs, out / "zeroshot_vs_linear_probe.png"))
    for task, label in (("zeroshot_classification", "zeroshot"), ("linear_probe", "linear_probe"),
                        ("zeroshot_retrieval", "retrieval")):
        datasets = [d for d in names if any((m, d, task) in by for m in grid.models)]
        if datasets:
            metric = next(r["main_metric"] for r in rows if r["task"] == task)
            files.append(bar_plot(plt, grid.models, datasets, by, task, metric, out / f"per_dataset_{label}.png"))
    return [Path(f).name for f in files]


def scatter_plot(plt, pairs: dict, path: Path) -> str:
    """Per model and dataset, zero-shot (y) against the linear probe on the same features (x)."""
    fig, ax = plt.subplots(figsize=(6, 6))
    for i, (model, points) in enumerate(pairs.items()):
        if not points:
            continue
        x = np.array([p[1] for p in points]) * 100
        y = np.array([p[2] for p in points]) * 100
        ax.scatter(x, y, s=30, color=f"C{i}", label=model)
        for (name, _, _), xi, yi in zip(points, x, y):
            ax.annotate(name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot([0, 100], [0, 100], "k--", lw=1, label="zero-shot = linear probe")
    ax.set(xlim=(0, 100), ylim=(0, 100), xlabel="linear probe accuracy (%)", ylabel="zero-shot score (%)",
           title="zero-shot vs linear probe across datasets")
    return finish(plt, fig, ax, path, "upper left")


def bar_plot(plt, models: list[str], datasets: list[str], by: dict, task: str, metric: str, path: Path) -> str:
    """Grouped bars: one group per dataset, one bar per model, the task's main metric."""
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(datasets) * max(len(models), 1) + 2), 4.5))
    x = np.arange(len(datasets))
    for i, model in enumerate(models):
        values = [100 * by.get((model, d, task), np.nan) for d in datasets]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, color=f"C{i}", label=model)
    ax.set_xticks(x, datasets, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel=f"{metric} (%)", ylim=(0, 100), title=f"{task} per dataset")
    return finish(plt, fig, ax, path)
