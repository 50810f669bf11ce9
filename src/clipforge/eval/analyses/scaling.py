"""The scaling study (``--suite scaling``): zero-shot error against training compute, log-log.

Reproduces Radford et al. 2021, §3.1.5, Figure 9: the average zero-shot error of the 5 ResNet CLIP
models over 39 evaluations on 36 datasets follows a log-log linear trend across a 44x range of
model compute, while single evaluations are much noisier. Here every model of a series (the
suite's own model and :attr:`ScalingConfig.series`: checkpoints or model names) is scored zero-shot
on the run's classification tasks; its training compute is FLOPs per training sample, counted on
its architecture, times the samples it saw (from its training run, or given as ``PATH=SAMPLES``;
:mod:`~clipforge.eval.analyses.compute`). The report fits log10(average error) against
log10(compute) by least squares and gives every model's residual (how far above or below the
trend it lies, in log10 units); the plot shows each task's errors as light lines, the average, the
fitted line and the residuals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipforge.eval.analyses import compute, stats
from clipforge.eval.analyses.common import single_label_tasks
from clipforge.eval.report import _table

PAPER = ("Radford et al. 2021, §3.1.5, Figure 9: average zero-shot error of 5 ResNet CLIP models is log-log linear "
         "in model compute across a 44x range")


@dataclass(frozen=True)
class ScalingConfig:
    series: tuple[str, ...] = ()  # other models of the series: "PATH_OR_NAME" or "PATH_OR_NAME=SAMPLES_SEEN"
    model: str | None = None  # the suite's own model as the series names it (same forms); None: not a point


def parse_entry(entry: str) -> tuple[str, int | None]:
    """``"runs/w16/final=1.2e6"`` → ("runs/w16/final", 1200000); without ``=``, samples are read from the run."""
    path, sep, samples = entry.rpartition("=") if "=" in entry else (entry, "", "")
    if not sep:
        return entry, None
    try:
        value = float(samples)
    except ValueError:
        raise ValueError(f"scaling series entry {entry!r}: samples seen after '=' must be a number") from None
    if value <= 0:
        raise ValueError(f"scaling series entry {entry!r}: samples seen must be positive")
    return path, int(value)


def available(layout: Any, config: Any) -> str | None:
    c = config.analyses.scaling
    if not layout.classification:
        return "no classification sets"
    if len(c.series) + (c.model is not None) < 2:
        return "no model series (--series: at least two models with the suite's own)"
    return None


def run(suite: Any) -> dict:
    c = suite.config.analyses.scaling
    tasks = single_label_tasks(suite, base_only=False)
    entries = ([(c.model, suite)] if c.model is not None else []) + [(e, None) for e in c.series]
    points = [_point(suite, entry, runner, tasks) for entry, runner in entries]
    points.sort(key=lambda p: p["training_flops"])
    try:
        fit = stats.power_law_fit([p["training_flops"] for p in points], [p["average_error"] for p in points])
    except ValueError as err:
        fit = {"error": str(err)}
    for i, p in enumerate(points):
        p["fitted_error"] = fit["fitted_error"][i] if "fitted_error" in fit else None
        p["residual"] = fit["residuals"][i] if "residuals" in fit else None
    fit = {k: v for k, v in fit.items() if k not in ("fitted_error", "residuals")}
    return {"paper": PAPER, "tasks": tasks, "points": points, "fit": fit,
            "compute": "training FLOPs = forward+backward FLOPs per sample (both towers, full context) x samples seen"}


def _point(suite: Any, entry: str, runner: Any, tasks: list[str]) -> dict:
    """One model's training compute and zero-shot errors (its own image pass unless it is the suite's)."""
    import clipforge
    from clipforge.eval.suite import Suite
    from clipforge.zeroshot import model_device

    path, samples = parse_entry(entry)
    record = compute.training_record(path) if samples is None else None
    if samples is None and record is None:
        raise ValueError(f"scaling series: {path} is not a checkpoint of a clipforge training run, so its samples seen "
                         f"are unknown; give them as {path}=SAMPLES (e.g. {path}=1.28e10)")
    samples = samples if samples is not None else record["samples_seen"]
    if runner is None:
        model, preprocess, tokenizer = clipforge.load(path, device=model_device(suite.model))
        config = model.config
        runner = Suite(clipforge.optimize_for_inference(model, inplace=True), preprocess, tokenizer, suite.layout, suite.config)
    else:
        config = runner.model.config
    flops = compute.flops_per_sample(config)
    errors = {t: 1.0 - runner.zero_shot(t)[0]["acc1"] for t in tasks}
    return {"model": path, "parameters": int(sum(p.numel() for p in runner.model.parameters())),
            "flops_per_sample": flops, "samples_seen": int(samples), "training_flops": flops["train_step"] * samples,
            "training_run": record, "errors": errors, "average_error": float(np.mean(list(errors.values())))}


# ---- report --------------------------------------------------------------------------------------


def section(result: dict, report: dict) -> list[str]:
    fit = result["fit"]
    if "slope" in fit:
        r2 = "–" if fit["r2"] is None else f"{fit['r2']:.3f}"
        trend = (f"Fit: log10(average error) = {fit['slope']:.4f} · log10(training FLOPs) + {fit['intercept']:.3f} "
                 f"(r² {r2}, {len(result['points'])} models).")
    else:
        trend = f"No fit: {fit['error']}."
    rows = [[f"`{p['model']}`", f"{p['parameters']:,}", f"{p['flops_per_sample']['train_step'] / 1e9:.3g}",
             f"{p['samples_seen']:,}", f"{p['training_flops']:.3g}", f"{100 * p['average_error']:.1f}",
             "–" if p["fitted_error"] is None else f"{100 * p['fitted_error']:.1f}",
             "–" if p["residual"] is None else f"{p['residual']:+.4f}"] for p in result["points"]]
    return ["## Scaling: zero-shot error against training compute", "", f"Reproduces {result['paper']}. "
            f"Compute: {result['compute']}. Error: 1 − zero-shot top-1, averaged over {len(result['tasks'])} tasks.", "",
            *_table(["model", "parameters", "train GFLOP/sample", "samples seen", "training FLOPs", "avg error %",
                     "fitted %", "residual (log10)"], rows), "", trend, ""]


def plot(plt, result: dict, out_dir: Path) -> list[str]:
    from matplotlib.ticker import NullFormatter

    from clipforge.eval.plots import finish

    points = result["points"]
    x = np.array([p["training_flops"] for p in points])
    fig, (ax, res) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    for task in result["tasks"]:
        ax.plot(x, [100 * p["errors"][task] for p in points], "-", color="grey", alpha=0.35, lw=1)
    ax.plot([], [], "-", color="grey", alpha=0.35, label="single tasks")
    ax.plot(x, [100 * p["average_error"] for p in points], "o", color="C0", ms=7, label="average over tasks")
    fit = result["fit"]
    if "slope" in fit:
        grid = np.geomspace(x.min(), x.max(), 50)
        ax.plot(grid, 100 * 10 ** (fit["slope"] * np.log10(grid) + fit["intercept"]), "C3--",
                label=f"log-log fit (slope {fit['slope']:.3f})")
        res.axhline(0, color="k", lw=1)
        res.plot(x, [p["residual"] for p in points], "o", color="C3")
        res.set_xscale("log")
    res.set(xlabel="training FLOPs", ylabel="residual, log10(error) − fit", title="residuals")
    res.grid(alpha=0.3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    low, high = ax.get_ylim()  # ticks at 1, 2, 5 × 10^k inside the range, as plain numbers
    ticks = [m * 10.0**k for k in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
             for m in (1, 2, 5) if low <= m * 10.0**k <= high]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="training FLOPs", ylabel="zero-shot error (%, log scale)", title="zero-shot error vs compute")
    return [finish(plt, fig, ax, out_dir / "scaling.png")]
