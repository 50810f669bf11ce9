"""A single-file HTML report: the suite's numbers, example predictions, plots and training curves.

``write_html(report_dir, run_dir=...)`` reads ``report_dir/report.json`` and the PNG plots beside it,
draws the training curves from ``run_dir/metrics.jsonl`` (loss, accuracy, temperature) and writes
``report_dir/report.html``. Every image is inlined as a ``data:`` URI and the page has no scripts,
so the one file opens anywhere (a browser, an e-mail attachment) with nothing else beside it.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

from clipforge.eval.datasets import ShardMember
from clipforge.eval.report import classification_rows, retrieval_rows
from clipforge.paths import atomic_write
from clipforge.train.logging import read_metrics

HTML_NAME = "report.html"
TRAINING_PLOT = "training_curves.png"
# What each task of the synthetic world measures, in one line (other tasks get a generic line).
TASK_MEANINGS = {
    "heldout": "colour × shape pairs that no training image or caption contains: composition from parts",
    "shape": "which of 6 shapes, from text alone (single objects, pairs seen in training; prompts: the shape in each colour)",
    "colour": "which of 8 colours, from text alone (single objects; prompts: the colour on each shape)",
    "count": "how many objects (one, two or three)",
}
_SHIFTS = {"background": "striped or checked backgrounds in unseen hues", "noise": "heavy pixel noise",
           "style": "outlines instead of filled shapes"}
# Content-Security-Policy: nothing may be fetched; images only from data: URIs, no scripts.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{padding:.25em .7em;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child,.text{text-align:left}.meaning{color:#555;font-size:.9em}
.grid{display:flex;flex-wrap:wrap;gap:10px}.card{border:2px solid #c33;border-radius:6px;padding:6px;width:190px}
.card.ok{border-color:#3a3}.card img{width:128px;height:128px;image-rendering:pixelated;display:block;margin:auto}
.card .truth{font-weight:600;margin:.3em 0}.card ol{margin:0;padding-left:1.3em;font-size:.85em}
.bar{display:inline-block;height:.6em;background:#58a;margin-left:.3em;vertical-align:middle}
.figs{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
figure{margin:1em 0;max-width:540px}figure.wide{max-width:100%}figure img{max-width:100%}figcaption{color:#555;font-size:.9em}
"""


def meaning(task: str) -> str:
    """One line saying what a task's accuracy measures."""
    if task in TASK_MEANINGS:
        return TASK_MEANINGS[task]
    base, _, shift = task.partition("_shift_")
    if shift:
        return f"the {base} task under a shift the model never trained on: {_SHIFTS.get(shift, shift)}"
    return "zero-shot classification from the class names"


def image_uri(path: str | os.PathLike) -> str:
    """A ``data:`` URI holding the image file's bytes."""
    path = Path(path)
    kind = {".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".gif": "gif"}.get(path.suffix.lower(), "png")
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _sniff(data: bytes) -> str:
    """The image type of encoded bytes, from their signature (png when unknown)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "gif" if data[:4] == b"GIF8" else "png"


def example_image(root: Path, ref: str | dict) -> str | None:
    """The ``data:`` URI of an example image: a file under ``root``, or a member of a webdataset
    shard (``{"shard", "offset", "size", "key"}``); None when it is no longer there."""
    if isinstance(ref, dict):
        try:
            data = ShardMember(str(root / ref["shard"]), ref["offset"], ref["size"], ref["key"]).read()
        except OSError:  # the shard is gone or shorter now
            return None
        return f"data:image/{_sniff(data)};base64," + base64.b64encode(data).decode("ascii")
    path = root / ref
    return image_uri(path) if path.is_file() else None


def training_plot(train: list[dict], evals: list[dict], path: Path) -> str:
    """Loss, accuracy (in-batch and periodic zero-shot) and the learned logit scale against step."""
    from clipforge.eval.plots import _pyplot, save, smooth

    plt = _pyplot()
    steps = [r["step"] for r in train]
    window = max(1, len(train) // 40)
    fig, (loss_ax, acc_ax, scale_ax) = plt.subplots(1, 3, figsize=(14, 3.8))
    loss_ax.plot(steps, [r["loss"] for r in train], color="C0", alpha=0.3, lw=0.8, label="per step")
    loss_ax.plot(steps, smooth([r["loss"] for r in train], window), color="C0", label=f"mean of {window}")
    loss_ax.set(title="contrastive loss", xlabel="step", ylabel="loss")
    for key, label, colour in (("i2t_acc", "image→text, in batch", "C1"), ("t2i_acc", "text→image, in batch", "C2")):
        if all(key in r for r in train):
            acc_ax.plot(steps, [100 * v for v in smooth([r[key] for r in train], window)], color=colour, label=label)
    for task in sorted({r.get("task", "eval") for r in evals}):
        points = [r for r in evals if r.get("task", "eval") == task]
        acc_ax.plot([r["step"] for r in points], [100 * r["acc1"] for r in points], "o--", color="C3",
                    label=f"zero-shot {task}")
    acc_ax.set(title="accuracy", xlabel="step", ylabel="top-1 (%)", ylim=(0, 100))
    if all("logit_scale" in r for r in train):
        scale_ax.plot(steps, [r["logit_scale"] for r in train], color="C4")
    scale_ax.set(title="learned temperature", xlabel="step", ylabel="logit scale = 1 / temperature")
    for ax in (loss_ax, acc_ax, scale_ax):
        ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8)
    acc_ax.legend(fontsize=8)
    return save(plt, fig, path, dpi=90)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str], rows: list[list[Any]], text_columns: int = 1) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td{' class=text' if i < text_columns else ''}>{_esc(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def headline(report: dict) -> str:
    """Zero-shot top-1 per task against chance, with what each task measures."""
    rows = []
    for task, result in report.get("zeroshot", {}).items():
        chance = 1.0 / result["num_classes"]
        rows.append(f"<tr><td>{_esc(task)}</td><td><b>{100 * result['acc1']:.1f}%</b></td><td>{100 * chance:.1f}%</td>"
                    f"<td class='text meaning'>{_esc(meaning(task))}</td></tr>")
    return ("<table><tr><th>task</th><th>zero-shot top-1</th><th>chance</th><th class=text>what it measures</th></tr>"
            + "".join(rows) + "</table>")


def example_grid_images(report: dict, task: str) -> list:
    """The task's example images as PIL images, in the grid's order (those still readable)."""
    import io

    from PIL import Image

    result = report.get("zeroshot", {}).get(task, {})
    uris = [example_image(Path(report.get("data_root", ".")), e["image"]) for e in result.get("examples", [])]
    return [Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))).convert("RGB") for u in uris if u]


def examples_grid(report: dict, task: str) -> str:
    """Cards of the task's example images: the true class, the model's top-3 classes and probabilities."""
    result = report.get("zeroshot", {}).get(task, {})
    names, root = result.get("classnames", []), Path(report.get("data_root", "."))
    cards = []
    for example in result.get("examples", []):
        uri = example_image(root, example["image"])
        if uri is None:
            continue
        top = "".join(f"<li>{_esc(names[c])} {100 * p:.0f}%<span class=bar style='width:{round(60 * p)}px'></span></li>"
                      for c, p in example["top"])
        ok = " ok" if example["top"] and example["top"][0][0] == example["label"] else ""
        cards.append(f"<div class='card{ok}'><img alt='{_esc(names[example['label']])}' src='{uri}'>"
                     f"<div class=truth>{_esc(names[example['label']])}</div><ol>{top}</ol></div>")
    return f"<div class=grid>{''.join(cards)}</div>" if cards else ""


def _figure(path: Path, caption: str, wide: bool = False) -> str:
    return f"<figure{' class=wide' if wide else ''}><img alt='{_esc(path.stem)}' src='{image_uri(path)}'><figcaption>{_esc(caption)}</figcaption></figure>"


_CAPTIONS = {
    "few_shot": "Few-shot linear probes (mean ± std over seeds) against the zero-shot accuracy (dashed): how many "
                "labelled examples per class the zero-shot classifier is worth (the paper's Figure 6).",
    "robustness": "Effective robustness: accuracy under shift against in-distribution accuracy (logit axes) for "
                  "zero-shot and adapted linear probes (the paper's Figure 14).",
    "per_class_recall": "Zero-shot recall per class (dotted: chance).",
    "confusion": "Zero-shot confusion matrix, rows normalized.",
}


def plots_section(report_dir: Path, report: dict) -> str:
    parts = []
    for name in report.get("plots", []):
        path = report_dir / name
        if path.is_file():
            key = next((k for k in _CAPTIONS if Path(name).stem.startswith(k)), None)
            parts.append(_figure(path, _CAPTIONS.get(key, Path(name).stem)))
    return f"<div class=figs>{''.join(parts)}</div>"


def tables_section(report: dict) -> str:
    parts = []
    if report.get("zeroshot"):
        parts.append("<h3>Classification (accuracy, %)</h3>" + _table(
            ["task", "zero-shot top-1", "top-5", "mean per class", "linear probe", "zero-shot worth (shots)", "chance"],
            classification_rows(report)))
    if report.get("retrieval"):
        first = next(iter(report["retrieval"].values()))
        ks = sorted(int(k.split("@")[1]) for k in first if k.startswith("text_to_image_R@"))
        parts.append("<h3>Retrieval (%)</h3>" + _table(
            ["set", *[f"image→text R@{k}" for k in ks], *[f"text→image R@{k}" for k in ks]], retrieval_rows(report)))
    return "".join(parts)


def render(report_dir: Path, report: dict, run_dir: Path | None = None, notes: list[str] = ()) -> str:
    """The page's HTML (images inlined)."""
    title = f"Evaluation of {report.get('model', {}).get('name', 'a model')}"
    body = [f"<h1>{_esc(title)}</h1>", *(f"<p>{_esc(n)}</p>" for n in notes)]
    if report.get("zeroshot"):
        body += ["<h2>Zero-shot accuracy</h2>", headline(report)]
    grid_task = "heldout" if "heldout" in report.get("zeroshot", {}) else next(iter(report.get("zeroshot", {})), None)
    grid = examples_grid(report, grid_task) if grid_task else ""
    if grid:
        body += [f"<h2>Examples: {_esc(grid_task)}</h2>",
                 "<p class=meaning>Each card: the image, its true class, and the model's top-3 classes with "
                 "probabilities (softmax at the model's learned temperature); a green frame when the first is right.</p>",
                 grid]
    if run_dir is not None and (report_dir / TRAINING_PLOT).is_file():
        body += ["<h2>Training</h2>", _figure(report_dir / TRAINING_PLOT,
                                               "Loss, accuracy and the learned logit scale (1 / temperature) by step.", wide=True)]
    body += ["<h2>Plots</h2>", plots_section(report_dir, report), "<h2>Tables</h2>", tables_section(report)]
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\"><title>{_esc(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>")


def write_html(report_dir: str | os.PathLike, run_dir: str | os.PathLike | None = None,
               notes: list[str] = ()) -> Path:
    """Write ``report_dir/report.html`` (and the training-curves PNG when ``run_dir`` has metrics)."""
    report_dir = Path(report_dir)
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    if run_dir is not None:
        train, evals = read_metrics(run_dir), read_metrics(run_dir, "eval")
        if train:
            training_plot(train, evals, report_dir / TRAINING_PLOT)
    page = render(report_dir, report, Path(run_dir) if run_dir is not None else None, list(notes))
    return atomic_write(report_dir / HTML_NAME, page)  # never a half-written report
