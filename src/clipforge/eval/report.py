"""Writing the suite's results: report.json (every number), report.md (tables + plots), PNGs.

Plots (matplotlib, Agg backend): the few-shot curves with the zero-shot line (the paper's Figure
6), robustness scatters on logit axes with the baseline trend (Figure 14 / Taori et al.),
confusion matrices and per-class recall of the zero-shot classifier.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from clipforge.eval.robustness import DEFINITION as ROBUSTNESS_DEFINITION

ZERO_SHOT_PROTOCOL = (
    "CLIP_benchmark's: each prompt embedding L2-normalized, averaged per class, renormalized; logits = "
    "100 * cos(image, class); acc1/acc5 via torch.topk (acc5 NaN under 5 classes); mean_per_class_recall = "
    "balanced accuracy of argmax predictions"
)
RETRIEVAL_PROTOCOL = (
    "CLIP_benchmark's: cosine scores of normalized embeddings; Recall@k = share of queries with any "
    "correct item in the top k (torch.topk); text_to_image = image_retrieval_recall, image_to_text = "
    "text_retrieval_recall"
)


def protocol_notes(config: Any) -> dict:
    """Protocol descriptions and settings recorded with the numbers."""
    return {
        "zeroshot": ZERO_SHOT_PROTOCOL,
        "linear_probe": config.probe.describe(),
        "few_shot": config.few_shot.describe(),
        "retrieval": RETRIEVAL_PROTOCOL,
        "robustness": ROBUSTNESS_DEFINITION,
        "overlap": config.overlap.describe(),
    }


def clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf → None, tuples → lists, numpy scalars → Python numbers, keys → str."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(report: dict, out_dir: Path, plots: bool = True) -> dict:
    """Write report.json, report.md and the plots; returns the cleaned report (with "plots")."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = clean(report)
    if plots:
        from clipforge.eval.plots import make_plots

        report["plots"] = make_plots(report, out_dir)
    _write_atomic(out_dir / "report.json", json.dumps(report, indent=1, allow_nan=False))
    _write_atomic(out_dir / "report.md", markdown(report))
    return report


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename: a reader never sees half a report."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def classification_rows(report: dict) -> list[list[str]]:
    """task, zero-shot top-1/top-5/mean per-class, linear probe, few-shot worth (percent)."""
    rows = []
    for task, zs in report.get("zeroshot", {}).items():
        if zs.get("multilabel"):
            rows.append([task, f"mAP {_pct(zs['mean_average_precision'])}", "–", "–", "–", "–", "–"])
            continue
        probe = report.get("linear_probe", {}).get(task, {})
        worth = report.get("few_shot", {}).get(task, {}).get("zero_shot_worth")
        rows.append([task, _pct(zs["acc1"]), _pct(zs["acc5"]), _pct(zs["mean_per_class_recall"]),
                     _pct(probe.get("test_accuracy")), _worth(worth), f"{100 / zs['num_classes']:.1f}"])
    return rows


def _worth(worth: dict | None) -> str:
    if not worth:
        return "–"
    if worth["shots"] is not None:
        return f"{worth['shots']:.1f}"
    return "< 1" if worth["bound"] == "below" else "> max k"


def markdown(report: dict) -> str:
    lines = [f"# Evaluation of {report['model']['name']}", "", f"Data: `{report['data_root']}`. "
             f"Protocols: {', '.join(report['suite'])}.", ""]
    if report.get("zeroshot"):
        lines += ["## Classification (accuracy, %)", ""]
        lines += _table(["task", "zero-shot top-1", "top-5", "mean per class", "linear probe",
                         "zero-shot worth (shots)", "chance"], classification_rows(report))
        lines += ["", f"Zero-shot: {report['protocols']['zeroshot']}.", ""]
    lines += _probe_section(report) + _few_shot_section(report) + _retrieval_section(report)
    lines += _robustness_section(report) + _overlap_section(report)
    lines += _data_section(report)
    if report.get("skipped"):
        lines += ["## Not run", ""] + [f"- {p}: {why}" for p, why in report["skipped"].items()] + [""]
    for plot in report.get("plots", []):
        lines += [f"![{Path(plot).stem}]({plot})", ""]
    return "\n".join(lines)


def _data_section(report: dict) -> list[str]:
    """Image pass speed per set, skipped images and notes about the data."""
    lines = []
    if report.get("image_pass"):
        rows = [[name, str(t["images"]), f"{t['seconds']:.1f}", f"{t['images_per_second']:.1f}"]
                for name, t in report["image_pass"].items()]
        lines += ["## Image pass (each set encoded once, shared by every protocol)", ""]
        lines += _table(["set", "images", "seconds", "images/s"], rows) + [""]
    for name, s in report.get("skipped_images", {}).items():
        first = s["examples"][0]
        lines += [f"- `{name}`: {s['count']} images skipped (e.g. {first.get('image') or first.get('shard')} "
                  f"{first.get('key') or ''}: {first['reason']})"]
    lines += [f"- {name}: {note}" for name, note in report.get("notes", {}).items()]
    return lines + ([""] if report.get("skipped_images") or report.get("notes") else [])


def _probe_section(report: dict) -> list[str]:
    if not report.get("linear_probe"):
        return []
    p = report["protocols"]["linear_probe"]
    rows = [[t, _pct(r["test_accuracy"]), _pct(r["test_mean_per_class_recall"]), f"{r['C']:.3g}",
             f"{r['n_train']}/{r['n_val']}/{r['n_test']}", r["split"]] for t, r in report["linear_probe"].items()]
    return ["## Linear probe", "", f"L-BFGS logistic regression, max_iter {p['max_iter']}, features "
            f"`{p['features']}`; C grid start {p['c_start']}, {p['search']}; validation = "
            f"{p['val_fraction']:.0%} of the training split per class.", ""] + _table(
        ["task", "test accuracy", "mean per class", "C", "train/val/test", "split"], rows) + [""]


def _few_shot_section(report: dict) -> list[str]:
    if not report.get("few_shot"):
        return []
    shots = [p["shots"] for p in next(iter(report["few_shot"].values()))["points"]]
    rows = [[t, *[f"{100 * p['mean']:.1f} ± {100 * p['std']:.1f}" for p in r["points"]],
             _pct(r.get("zero_shot_accuracy")), _worth(r.get("zero_shot_worth"))] for t, r in report["few_shot"].items()]
    return ["## Few-shot linear probes (accuracy %, mean ± std over seeds)", "",
            f"{report['protocols']['few_shot']['protocol']}.", ""] + _table(
        ["task", *[f"{k}-shot" for k in shots], "zero-shot (same test)", "zero-shot worth"], rows) + [""]


def retrieval_rows(report: dict) -> list[list[str]]:
    rows = []
    for name, r in report.get("retrieval", {}).items():
        ks = sorted(int(k.split("@")[1]) for k in r if k.startswith("text_to_image_R@"))
        rows.append([name, *[_pct(r[f"image_to_text_R@{k}"]) for k in ks], *[_pct(r[f"text_to_image_R@{k}"]) for k in ks]])
    return rows


def _retrieval_section(report: dict) -> list[str]:
    if not report.get("retrieval"):
        return []
    ks = sorted(int(k.split("@")[1]) for k in next(iter(report["retrieval"].values())) if k.startswith("text_to_image_R@"))
    header = ["set", *[f"image→text R@{k}" for k in ks], *[f"text→image R@{k}" for k in ks]]
    return ["## Retrieval (%)", "", f"{report['protocols']['retrieval']}.", ""] + _table(header, retrieval_rows(report)) + [""]


def _robustness_section(report: dict) -> list[str]:
    if not report.get("robustness"):
        return []
    lines = ["## Robustness to distribution shift (accuracy %)", "", f"{report['protocols']['robustness']}.", ""]
    for base, r in report["robustness"].items():
        rows = [[name, _pct(c["in_distribution_accuracy"]), *[_pct(c["shifted_accuracy"][s]) for s in r["shifted"]],
                 _pct(c["average_shifted_accuracy"]), _pct(c["effective_robustness"]["average_shifted"])]
                for name, c in r["classifiers"].items()]
        trend = "y = x" if r["trend"]["average_shifted"] is None else "a line over %d probes" % r["baselines"]
        lines += [f"`{base}`, trend: {trend}.", ""]
        lines += _table(["classifier", base, *r["shifted"], "average shifted", "effective robustness"], rows) + [""]
    return lines


def _overlap_section(report: dict) -> list[str]:
    if not report.get("overlap"):
        return []
    o = report["overlap"]
    lines = ["## Train/eval overlap", "", f"Training pool: {o['pool']['images']} images of `{o['pool']['source']}` "
             f"({o['pool']['sampling']}). Thresholds flag {_pct(o['config']['target_recall'])}% of synthetic "
             "duplicates (crops, shifts, colour jitter, JPEG) of pool images.", ""]
    for name, d in o["detectors"].items():
        cal = d["calibration"]
        rows = [[t, _pct(r["overlap_fraction"]), _pct(r["accuracy_all"]), _pct(r["accuracy_overlap"]),
                 _pct(r["accuracy_clean"]), _pct(r["all_minus_clean"]),
                 "–" if r["p_value"] is None else f"{r['p_value']:.3g}"] for t, r in d["tasks"].items()]
        lines += [f"**{name}** detector: {d['description']}. Threshold {cal['threshold']:.4f}: recall "
                  f"{_pct(cal['recall'])}% of {cal['n_duplicates']} duplicates, false-positive rate "
                  f"{_pct(cal['false_positive_rate'])}% against the other pool images."
                  + ("" if d["reliable"] else " The detector does not separate duplicates from look-alikes here: "
                     "its overlap fractions are upper bounds."), ""]
        lines += _table(["task", "overlap %", "all", "overlap", "clean", "all − clean", "p (overlap > clean)"], rows) + [""]
    return lines


def summary_table(report: dict) -> str:
    """A plain-text summary for the console."""
    lines = []
    if report.get("zeroshot"):
        header = ["task", "zs top1", "top5", "mpc", "probe", "zs=shots", "chance"]
        lines += _plain(header, classification_rows(report))
    if report.get("retrieval"):
        ks = sorted(int(k.split("@")[1]) for k in next(iter(report["retrieval"].values())) if k.startswith("text_to_image_R@"))
        lines += [""] + _plain(["retrieval", *[f"i2t@{k}" for k in ks], *[f"t2i@{k}" for k in ks]], retrieval_rows(report))
    for base, r in report.get("robustness", {}).items():
        zs, lp = r["classifiers"]["zero-shot"], r["classifiers"]["linear probe"]
        lines.append(f"robustness {base}: zero-shot {_pct(zs['in_distribution_accuracy'])} -> "
                     f"{_pct(zs['average_shifted_accuracy'])} (ER {_pct(zs['effective_robustness']['average_shifted'])}), "
                     f"probe {_pct(lp['in_distribution_accuracy'])} -> {_pct(lp['average_shifted_accuracy'])} "
                     f"(ER {_pct(lp['effective_robustness']['average_shifted'])})")
    for name, d in report.get("overlap", {}).get("detectors", {}).items():
        parts = [f"{t} {_pct(r['overlap_fraction'])}%" for t, r in d["tasks"].items()]
        lines.append(f"overlap, {name} detector (FPR {_pct(d['calibration']['false_positive_rate'])}%"
                     f"{'' if d['reliable'] else ', upper bounds'}): " + ", ".join(parts))
    return "\n".join(lines)


def _plain(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*header)] + [fmt.format(*row) for row in rows]
