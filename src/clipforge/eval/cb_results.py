"""Results in CLIP_benchmark's JSON schema, one file per (model, dataset, task).

Each file is what ``clip_benchmark eval`` writes: ``{"dataset", "model", "pretrained", "task",
"metrics", "language"}``, named ``{dataset}_{pretrained}_{model}_{language}_{task}.json`` (CLIP_benchmark's
default ``--output``, ``/`` in names replaced by ``_``), so ``clip_benchmark build`` and the tools
that read its results take them as they are. Differences, all deliberate:

- strict JSON: a metric CLIP_benchmark writes as a bare ``NaN`` (acc5 under five classes) is ``null``;
- ``linear_probe`` is the paper's L-BFGS probe (:mod:`clipforge.eval.linear_probe`), not
  CLIP_benchmark's AdamW one: the metric names are CLIP_benchmark's (``lp_acc1``, ``lp_acc5``,
  ``lp_mean_per_class_recall``), the regularisation is ``C`` instead of ``weight_decay``;
  few-shot curves give one ``linear_probe`` file per k (``..._linear_probe_{k}shot.json``,
  ``fewshot_k`` = k, the mean over seeds);
- retrieval reports Recall@1/5/10 under CLIP_benchmark's names (``image_retrieval_recall@k`` is
  text→image).

Files are written to a temporary name and renamed, so a results folder never holds half a file.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

LANGUAGE = "en"


def identity(model_arg: str) -> tuple[str, str]:
    """(model, pretrained) as CLIP_benchmark names them: OpenAI's weights are ``("ViT-B-32", "openai")``
    (open_clip's names), a checkpoint path is (its folder or file name, the path)."""
    try:
        from clipforge.registry import OPENAI_MODELS, aliases_of, canonical_name

        canonical = canonical_name(model_arg)
        if canonical in OPENAI_MODELS and not os.path.exists(model_arg):
            dashed = next((a[: -len("-quickgelu")] for a in aliases_of(canonical) if a.endswith("-quickgelu")), canonical)
            return dashed, "openai"
    except KeyError:
        pass
    path = Path(model_arg)
    return (path.stem if path.suffix else path.name) or model_arg, model_arg


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _zeroshot(result: dict) -> dict:
    if result.get("multilabel"):
        return {"mean_average_precision": result["mean_average_precision"]}
    metrics = {k: _finite(result.get(k)) for k in ("acc1", "acc5", "mean_per_class_recall")}
    if "roc_auc" in result:
        metrics["roc_auc"] = result["roc_auc"]
    return metrics


def _probe(result: dict, seed: int) -> dict:
    return {"lp_acc1": result["test_accuracy"], "lp_acc5": _finite(result.get("test_top5_accuracy")),
            "lp_mean_per_class_recall": result["test_mean_per_class_recall"], "C": result["C"],
            "fewshot_k": -1, "seed": seed, "protocol": "paper (L-BFGS logistic regression, C by binary search)"}


def _retrieval(result: dict) -> dict:
    return dict(result["clip_benchmark"])


def file_name(dataset: str, model: str, pretrained: str, task: str, suffix: str = "") -> str:
    """CLIP_benchmark's default output name ``{dataset}_{pretrained}_{model}_{language}_{task}.json``."""
    parts = (dataset, os.path.basename(pretrained.rstrip("/")) or pretrained, model, LANGUAGE, task)
    return "_".join(_slug(p) for p in parts) + f"{suffix}.json"


def cb_records(report: dict, model: str, pretrained: str | None = None) -> list[tuple[str, dict]]:
    """(file name, record) for every (dataset, task) result in a suite report."""
    pretrained = pretrained if pretrained is not None else model
    records = []

    def add(dataset: str, task: str, metrics: dict, suffix: str = "") -> None:
        record = {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task,
                  "metrics": metrics, "language": LANGUAGE}
        records.append((file_name(dataset, model, pretrained, task, suffix), record))

    seed = report.get("protocols", {}).get("linear_probe", {}).get("seed", 0)
    for dataset, result in report.get("zeroshot", {}).items():
        add(dataset, "zeroshot_classification", _zeroshot(result))
    for dataset, result in report.get("linear_probe", {}).items():
        add(dataset, "linear_probe", _probe(result, seed))
    for dataset, result in report.get("few_shot", {}).items():
        for point in result["points"]:
            metrics = {"lp_acc1": point["mean"], "lp_acc1_std": point["std"], "fewshot_k": point["shots"],
                       "seeds": len(point["accuracies"]), "C": point["C"],
                       "protocol": "paper (L-BFGS logistic regression, C by binary search on the full validation split)"}
            add(dataset, "linear_probe", metrics, f"_{point['shots']}shot")
    for dataset, result in report.get("retrieval", {}).items():
        add(dataset, "zeroshot_retrieval", _retrieval(result))
    return records


def _slug(text: str) -> str:
    return re.sub(r"[/\\\s]+", "_", str(text)).strip("_") or "_"


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_records(records: list[tuple[str, dict]], out_dir: Path) -> list[str]:
    """Write each record as ``out_dir/<file name>``; the names written."""
    for name, record in records:
        write_json_atomic(out_dir / name, record)
    return [name for name, _ in records]
