"""Zero-shot against the linear probe across tasks (``--suite zs_vs_probe``).

Reproduces Radford et al. 2021, §3.1.5, Figure 8: across datasets, zero-shot accuracy correlates
with fully supervised linear-probe accuracy on the same features (r = 0.82, p < 1e-6), mostly 10 to
25 points below it; the line predicting zero-shot from linear-probe accuracy has slope 1.28 (95%
interval 0.93–1.79); on only 5 datasets does zero-shot come within 3 points. Here every
in-distribution single-label task of the run gives one point: the linear probe's test accuracy
(the ``linear_probe`` protocol's classifier, the paper's Appendix A.3 protocol) and zero-shot
accuracy on the same test images. The report gives Pearson's r with its p-value, the fitted line
with a t-based 95% interval for its slope, the mean gap and the tasks within 3 points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from clipforge.eval.analyses import stats
from clipforge.eval.analyses.common import single_label_tasks
from clipforge.eval.report import _pct, _table

PAPER = ("Radford et al. 2021, §3.1.5, Figure 8: zero-shot vs linear-probe accuracy across datasets, r = 0.82, "
         "slope 1.28 (95% interval 0.93-1.79), zero-shot within 3 points on 5 of 27 datasets")
CLOSE_POINTS = 0.03  # "approaches" linear-probe performance: within 3 points (Figure 8)


def available(layout: Any, config: Any) -> str | None:
    return None if len(layout.base_tasks()) >= 2 else "fewer than two in-distribution classification sets"


def run(suite: Any) -> dict:
    points = {}
    for name in single_label_tasks(suite):
        probe = suite.probes(name, few_shot=False)["full"]["test_accuracy"]
        points[name] = {"linear_probe": float(probe), "zero_shot": float(suite.zero_shot_on_test(name)),
                        "num_classes": len(suite.task(name).eval_set.classnames)}
    x = [p["linear_probe"] for p in points.values()]
    y = [p["zero_shot"] for p in points.values()]
    try:
        fit = stats.linear_fit(x, y)
    except ValueError as err:
        fit = {"error": str(err)}
    gaps = np.subtract(x, y)
    return {"paper": PAPER, "points": points, "fit": fit, "mean_gap": float(gaps.mean()) if len(gaps) else None,
            "within_3_points": [n for n, g in zip(points, gaps) if abs(g) <= CLOSE_POINTS]}


def section(result: dict, report: dict) -> list[str]:
    fit = result["fit"]
    rows = [[name, _pct(p["linear_probe"]), _pct(p["zero_shot"]), f"{100 * (p['zero_shot'] - p['linear_probe']):+.1f}"]
            for name, p in result["points"].items()]
    if "slope" in fit:
        r = "–" if fit["pearson_r"] is None else f"{fit['pearson_r']:.3f} (p = {fit['p_value']:.3g})"
        ci = "" if fit["slope_ci"] is None else f", 95% interval {fit['slope_ci'][0]:.2f}–{fit['slope_ci'][1]:.2f}"
        summary = (f"Pearson r {r}; zero-shot = {fit['slope']:.3f} · linear probe {fit['intercept']:+.3f}{ci}; "
                   f"mean gap {100 * result['mean_gap']:.1f} points; within 3 points: "
                   f"{', '.join(result['within_3_points']) or 'none'}.")
    else:
        summary = f"No fit: {fit['error']}."
    return ["## Zero-shot vs linear probe across tasks", "", f"Reproduces {result['paper']}. Accuracy (%) on each "
            "task's probe test split.", "", *_table(["task", "linear probe", "zero-shot", "difference"], rows), "",
            summary, ""]


def plot(plt, result: dict, out_dir: Path) -> list[str]:
    from clipforge.eval.plots import finish

    names = list(result["points"])
    x = np.array([result["points"][n]["linear_probe"] for n in names]) * 100
    y = np.array([result["points"][n]["zero_shot"] for n in names]) * 100
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.scatter(x, y, s=30, color="C0", label="tasks")
    for name, xi, yi in zip(names, x, y):
        ax.annotate(name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot([0, 100], [0, 100], "k--", lw=1, label="y = x (zero-shot = linear probe)")
    fit = result["fit"]
    if "slope" in fit:
        grid = np.linspace(0, 100, 2)
        r = "" if fit["pearson_r"] is None else f", r = {fit['pearson_r']:.2f}"
        ax.plot(grid, fit["slope"] * grid + 100 * fit["intercept"], "C3-", lw=1.5,
                label=f"fit: slope {fit['slope']:.2f}{r}")
    ax.set(xlim=(0, 100), ylim=(0, 100), xlabel="linear probe accuracy (%)", ylabel="zero-shot accuracy (%)",
           title="zero-shot vs linear probe")
    return [finish(plt, fig, ax, out_dir / "zs_vs_probe.png", "upper left")]
