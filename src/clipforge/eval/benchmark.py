"""Many models × many datasets × tasks in one run, resumable, with one table and plots.

``run_benchmark(models, datasets, tasks, out)`` evaluates every cell (model, dataset, task) whose
CLIP_benchmark-schema JSON is not in ``out/results/`` yet: finished cells are kept, so a killed
or extended grid picks up where it stopped. For one (model, dataset) every task runs over one
:class:`~clipforge.eval.suite.Suite`, so the images are encoded once for zero-shot and the probe.
A failing cell (say, a dataset that is not on disk) is recorded in ``out/errors.json`` and the
grid goes on. Afterwards (:func:`build_table`):

- ``benchmark.csv``: one row per result file, CLIP_benchmark's ``build`` layout (every metric a
  column) plus ``main``, the paper's metric for the dataset (the zoo's ``metric``);
- ``benchmark.md``: per task, datasets × models of the main metric, with the mean over datasets;
- ``zeroshot_vs_linear_probe.png``: per model, zero-shot against linear-probe score across datasets
  (the paper's comparison of zero-shot CLIP with a linear probe on its features);
- ``per_dataset_<task>.png``: bars per dataset, one per model.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from clipforge.eval.cb_results import file_name, identity, write_json_atomic

TASKS = {"zeroshot": "zeroshot_classification", "linear_probe": "linear_probe", "retrieval": "zeroshot_retrieval"}
RETRIEVAL_MAIN = ("image_retrieval_recall@5", "text_retrieval_recall@5")


@dataclass(frozen=True)
class Cell:
    model: str  # as given (name or path)
    dataset: str
    task: str  # a key of TASKS
    file: str  # the result file under results/


@dataclass(frozen=True)
class DataItem:
    """A dataset of the grid: a zoo name, or a folder given by path (``path`` set)."""

    name: str
    task: str  # classification | multilabel | retrieval
    path: Path | None = None


@dataclass
class Grid:
    models: list[str]
    datasets: list[DataItem]
    tasks: list[str]
    cells: list[Cell] = field(default_factory=list)


def data_items(datasets: Sequence[str]) -> list[DataItem]:
    """Zoo names and collections, and folders (any format ``clipforge eval --data`` reads) by path."""
    from clipforge.eval import dataset_zoo as zoo
    from clipforge.eval.layout import discover

    items: list[DataItem] = []
    for text in datasets:
        if os.path.isdir(text):
            layout = discover(text)
            if len(layout.classification) + len(layout.retrieval) != 1:
                raise ValueError(f"{text}: a benchmark dataset folder must hold one set, found "
                                 f"{sorted(layout.classification) + sorted(layout.retrieval)}")
            kind = "retrieval" if layout.retrieval else "classification"
            items.append(DataItem(Path(text).name, kind, Path(text)))
        else:
            items += [DataItem(e.name, e.task) for e in zoo.expand([text]) if e.name not in {i.name for i in items}]
    return items


def plan(models: Sequence[str], datasets: Sequence[str], tasks: Sequence[str]) -> Grid:
    """Every applicable (model, dataset, task): retrieval tasks on retrieval sets, the others on classification."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; choose from {', '.join(TASKS)}")
    items = data_items(datasets)
    grid = Grid(list(models), items, list(tasks))
    for model in models:
        cb_model, pretrained = identity(model)
        for item in items:
            for task in tasks:
                if (task == "retrieval") != (item.task == "retrieval") or (task == "linear_probe" and item.task == "multilabel"):
                    continue
                grid.cells.append(Cell(model, item.name, task, file_name(item.name, cb_model, pretrained, TASKS[task])))
    return grid


def _layout(item: DataItem, splits, dataset_root, prompts: str, download: bool, progress: bool):
    from clipforge.eval.layout import discover
    from clipforge.eval.named import zoo_layout

    if item.path is not None:
        return discover(item.path), {}
    return zoo_layout([item.name], dataset_root, splits=splits, prompts=prompts, download=download, progress=progress)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in text).strip("_") or "model"


def run_benchmark(models: Sequence[str], datasets: Sequence[str], tasks: Sequence[str], out: str | os.PathLike, *,
                  config=None, dataset_root=None, prompts: str = "paper", download: bool = True,
                  load: Callable[[str], tuple] | None = None, echo: Callable[[str], Any] | None = print) -> dict:
    """Run the missing cells, then write the table and plots. Returns {"done", "skipped", "errors", "table"}."""
    from clipforge.eval.suite import EvalConfig, run_suite

    out, config = Path(out), config or EvalConfig()
    grid = plan(models, datasets, tasks)
    results, errors_file = out / "results", out / "errors.json"
    errors = {k: v for k, v in _read_json(errors_file, {}).items()}
    todo = [c for c in grid.cells if not (results / c.file).is_file()]
    done, skipped = [], len(grid.cells) - len(todo)
    if echo and skipped:
        echo(f"[benchmark] {skipped} of {len(grid.cells)} cells already done in {results}")
    for model in grid.models:
        cells = [c for c in todo if c.model == model]
        if not cells:
            continue
        try:
            loaded = (load or _load)(model)
        except Exception as err:  # a model that cannot be loaded fails its cells, not the grid
            errors.update({f"{model} / {c.dataset}": f"{type(err).__name__}: {err}" for c in cells})
            write_json_atomic(errors_file, errors)
            continue
        for dataset in dict.fromkeys(c.dataset for c in cells):
            mine = [c for c in cells if c.dataset == dataset]
            key = f"{model} / {dataset}"
            try:
                splits = ("test", "train") if any(c.task == "linear_probe" for c in mine) else ("test",)
                item = next(i for i in grid.datasets if i.name == dataset)
                layout, notes = _layout(item, splits, dataset_root, prompts, download, config.progress)
                protocols = [("retrieval" if c.task == "retrieval" else c.task) for c in mine]
                run_suite(*loaded, layout, out / "runs" / _slug(model) / dataset, protocols, config,
                          model_name=model, results_dir=results, notes=notes, echo=None)
                done += [c for c in mine if (results / c.file).is_file()]
                errors.pop(key, None)
            except Exception as err:  # one bad cell must not stop the grid; it is recorded and reported
                errors[key] = f"{type(err).__name__}: {err}"
                if echo:
                    echo(f"[benchmark] {key}: {errors[key]}")
            write_json_atomic(errors_file, errors)
        del loaded
        gc.collect()
    table = build_table(grid, out)
    if echo:
        echo(table["markdown"])
    return {"done": len(done), "skipped": skipped, "errors": errors, "table": table}


def _load(model: str) -> tuple:
    import clipforge

    loaded = clipforge.load(model)
    if loaded[2] is None:
        raise ValueError(f"{model}: no tokenizer saved with the model and OpenAI's vocabulary is not available")
    return loaded


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def main_metric(record: dict) -> tuple[str, float | None]:
    """The paper's metric for the record's dataset (zoo ``metric``), from its metrics."""
    from clipforge.eval import dataset_zoo as zoo

    metrics, task = record["metrics"], record["task"]
    if task == "zeroshot_retrieval":
        values = [metrics.get(k) for k in RETRIEVAL_MAIN]
        return "mean R@5", None if None in values else sum(values) / 2
    if task == "linear_probe":
        return "lp_acc1", metrics.get("lp_acc1")
    try:
        metric = zoo.get(record["dataset"]).metric
    except ValueError:
        metric = "acc1"
    if metric == "mean_top1_top5":
        a, b = metrics.get("acc1"), metrics.get("acc5")
        return metric, None if a is None or b is None else (a + b) / 2
    return metric, metrics.get(metric, metrics.get("acc1", metrics.get("mean_average_precision")))


def build_table(grid: Grid, out: Path) -> dict:
    """benchmark.csv, benchmark.md and the plots from the grid's result files."""
    records = [(c, _read_json(out / "results" / c.file, None)) for c in grid.cells]
    records = [(c, r) for c, r in records if r is not None]
    rows = []
    for cell, record in records:
        metric, value = main_metric(record)
        rows.append({"model": cell.model, "dataset": record["dataset"], "task": record["task"],
                     "main_metric": metric, "main": value, **{k: v for k, v in record["metrics"].items()
                                                              if not isinstance(v, (list, dict))},
                     "pretrained": record["pretrained"], "language": record["language"]})
    _write_csv(out / "benchmark.csv", rows)
    markdown = _markdown(grid, rows)
    _write_text(out / "benchmark.md", markdown)
    plots = []
    if rows:
        from clipforge.eval.benchmark_plots import make_plots

        plots = make_plots(grid, rows, out)
    return {"rows": rows, "markdown": markdown, "plots": plots}


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row)) or ["model", "dataset", "task", "main"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    _write_text(path, buffer.getvalue())


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _markdown(grid: Grid, rows: list[dict]) -> str:
    names = [d.name for d in grid.datasets]
    lines = [f"# Benchmark: {len(grid.models)} models × {len(names)} datasets", ""]
    for task, cb_task in TASKS.items():
        cells = {(r["model"], r["dataset"]): r for r in rows if r["task"] == cb_task}
        datasets = [d for d in names if any((m, d) in cells for m in grid.models)]
        if not datasets:
            continue
        lines += [f"## {task} (%)", "", "| dataset | metric | " + " | ".join(grid.models) + " |",
                  "|---|---|" + "---|" * len(grid.models)]
        for d in datasets:
            metric = next(cells[(m, d)]["main_metric"] for m in grid.models if (m, d) in cells)
            lines.append(f"| {d} | {metric} | " + " | ".join(_pct(cells.get((m, d), {}).get("main")) for m in grid.models) + " |")
        means = []
        for m in grid.models:
            values = [cells[(m, d)]["main"] for d in datasets if (m, d) in cells and cells[(m, d)]["main"] is not None]
            means.append(_pct(sum(values) / len(values)) if values and len(values) == len(datasets) else "–")
        lines += [f"| **mean** | | " + " | ".join(means) + " |", ""]
    return "\n".join(lines)

