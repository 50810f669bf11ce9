"""The one-shot GPU benchmark suite (run by gpu_suite.sh on a lent H100/H200; ≤ 9 minutes).

Tasks run in priority order; before each, a time guard skips it when its estimated cost no longer
fits the budget (BENCH_BUDGET_S, default 480 s). Results are rewritten after every task to
$OUT/gpu_results.json (+ .md), so a run cut short still leaves every finished number.

BENCH_SMOKE=1 runs the same code on the CPU with tiny models, batches and a short budget: it checks
the suite's logic here, where no GPU is.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from clipforge.registry import get_config  # noqa: E402
from bench_inference import run_encode_workload  # noqa: E402
from bench_train import flops_per_sample, run_train_workload  # noqa: E402
from flops import matmul_peak_tflops  # noqa: E402

SMOKE = os.environ.get("BENCH_SMOKE") == "1"
DEVICE = "cpu" if SMOKE else "cuda"
BF16 = torch.bfloat16
# Smoke: every model name maps to a tiny config of the same family, batches shrink to 4.
SMOKE_MODELS = {"ViT-B/32": "tiny-vit", "ViT-B/16": "tiny-vit", "ViT-L/14": "tiny-vit", "RN50": "tiny-rn"}
# Peer figures measured on one H100 (shared/docs/CLIP_NOTES.md), for the final table.
PEER_NOTES = {("train", "ViT-B/32"): "open_clip 3,810 eager / 5,541 compiled; target >= 6,500",
              ("train", "ViT-B/16"): "open_clip 1,670 eager / 2,235 compiled; target 50% of bf16 peak",
              ("train", "RN50"): "open_clip 1,339", ("train", "ViT-L/14"): "open_clip 503 eager",
              ("encode_image", "ViT-B/32"): "open_clip 21,377; target >= 1.3x",
              ("encode_image", "ViT-B/16"): "open_clip 6,572", ("encode_image", "ViT-L/14"): "open_clip 1,760"}


@dataclass
class Task:
    kind: str  # "train" or "encode_image"
    model: str
    batch: int
    variant: str
    est_s: float  # estimated wall time on an H100, compile included
    cast: bool = False  # encode: bf16 weights instead of autocast
    extra: dict[str, Any] = field(default_factory=dict)


def tasks() -> list[Task]:
    """Priority order: the issue's targets first, then peers' compiled runs, ablations, large models.

    Estimates are the wall times seen on an H200 (torch 2.11; compile included) plus a margin.
    BENCH_SELECT=<regex> keeps only the tasks whose label matches (e.g. to rerun what a short
    budget skipped: ``BENCH_SELECT='ViT-B/16.*compile|open_clip:compile'``).
    """
    t = [
        Task("train", "ViT-B/32", 512, "ours:trim,fused,compile", 75),
        Task("train", "ViT-B/32", 512, "open_clip:", 12),
        Task("encode_image", "ViT-B/32", 1024, "ours:", 8, cast=True),
        Task("encode_image", "ViT-B/32", 1024, "ours:compile", 20, cast=True),
        Task("encode_image", "ViT-B/32", 1024, "open_clip:", 6),
        Task("encode_image", "ViT-B/32", 1024, "open_clip:", 6, cast=True),
        Task("train", "ViT-B/16", 256, "ours:trim,fused,compile", 90),
        Task("train", "RN50", 256, "ours:trim,cl,fused", 10),
        Task("train", "RN50", 256, "open_clip:", 10),
        Task("train", "ViT-B/32", 512, "ours:trim,fused", 8),
        Task("train", "ViT-B/32", 512, "ours:", 8),
        Task("train", "ViT-B/32", 512, "open_clip:compile", 90),
        Task("encode_image", "ViT-B/32", 1024, "open_clip:compile", 25, cast=True),
        Task("encode_image", "ViT-B/16", 1024, "ours:compile", 25, cast=True),
        Task("encode_image", "ViT-B/16", 1024, "open_clip:", 8),
        Task("encode_image", "ViT-B/16", 1024, "open_clip:", 8, cast=True),
        Task("train", "ViT-B/32", 512, "ours:fused", 8),
        Task("train", "ViT-B/16", 256, "open_clip:", 15),
        Task("encode_image", "ViT-L/14", 1024, "ours:compile", 45, cast=True),
        Task("encode_image", "ViT-L/14", 1024, "open_clip:", 20),
        Task("train", "ViT-L/14", 128, "ours:trim,fused,compile", 150),
        Task("train", "ViT-L/14", 128, "open_clip:", 30),
        Task("train", "ViT-B/32", 512, "hf:", 10),
        Task("train", "RN50", 256, "ours:trim,cl,fused,compile", 120),
    ]
    select = os.environ.get("BENCH_SELECT")
    if select:
        t = [task for task in t if re.search(select, label(task))]
    if SMOKE:
        for task in t:
            task.model, task.batch = SMOKE_MODELS[task.model], 4
    return t


def label(task: Task) -> str:
    return f"{task.kind} {task.model} b{task.batch} {task.variant}{' bf16-weights' if task.cast else ''}"


def run_task(task: Task, warmup: int, iters: int) -> dict[str, Any]:
    if task.kind == "train":
        return run_train_workload(task.model, task.variant, task.batch, DEVICE, BF16, warmup, iters)
    return run_encode_workload(task.model, "image", task.variant, task.batch, DEVICE, BF16, task.cast, warmup, iters)


def add_rates(rec: dict[str, Any], peak_tflops: float, flops_cache: dict) -> None:
    """samples/s (median), FLOPs per sample of the workload as fed, TFLOP/s and utilisation."""
    rec["samples_per_s"] = rec["batch"] / common.median(rec["times_s"])
    if rec["workload"] == "train":
        key = (rec["model"], rec["token_length"] < get_config(rec["model"]).text.context_length)
        if key not in flops_cache:
            flops_cache[key] = flops_per_sample(rec["model"], key[1], DEVICE)["train_step"]
        flops = flops_cache[key]
    else:
        key = (rec["model"], "image")
        if key not in flops_cache:
            from bench_inference import flops_per_sample as encode_flops

            flops_cache[key] = encode_flops(rec["model"], "image", False, DEVICE)
        flops = flops_cache[key]
    rec["gflop_per_sample"] = flops / 1e9
    rec["tflops"] = rec["samples_per_s"] * flops / 1e12
    rec["utilisation"] = rec["tflops"] / peak_tflops


def main() -> int:
    out = Path(os.environ.get("OUT") or "benchmarks/results/gpu")
    out.mkdir(parents=True, exist_ok=True)
    budget = float(os.environ.get("BENCH_BUDGET_S", "3000" if SMOKE else "480"))
    warmup, iters = (1, 2) if SMOKE else (3, 10)
    start = time.perf_counter()
    if not SMOKE and not torch.cuda.is_available():
        print("no CUDA device: run with BENCH_SMOKE=1 to check the suite on the CPU", file=sys.stderr)
        return 2
    env = common.environment(DEVICE)
    env["smoke"] = SMOKE
    peak = matmul_peak_tflops(DEVICE, BF16, size=256 if SMOKE else 8192, seconds=0.5 if SMOKE else 3.0)
    env["matmul_peak"] = peak
    common.log(f"environment: {json.dumps(env)}")
    common.log(f"bf16 matmul peak: {peak['tflops']:.1f} TFLOP/s")
    records: list[dict[str, Any]] = []
    flops_cache: dict = {}
    for task in tasks():
        elapsed = time.perf_counter() - start
        name = label(task)
        if elapsed + task.est_s > budget:
            common.log(f"SKIP (time guard: {elapsed:.0f} s used, ~{task.est_s:.0f} s needed, budget {budget:.0f} s) {name}")
            records.append({"workload": task.kind, "model": task.model, "variant": task.variant, "skipped": "time",
                            "dtype": "bfloat16 weights" if task.cast else None})
            continue
        records.append(_run_one(task, name, warmup, iters, peak["tflops"], flops_cache))
        _write(out, env, records)
    _write(out, env, records)
    print(final_table(records))
    common.log(f"suite done in {time.perf_counter() - start:.0f} s; results in {out}")
    return 0


def _run_one(task: Task, name: str, warmup: int, iters: int, peak_tflops: float, flops_cache: dict) -> dict:
    common.log(f"RUN {name}")
    t0 = time.perf_counter()
    try:
        rec = run_task(task, warmup, iters)
        add_rates(rec, peak_tflops, flops_cache)
        common.log(f"  {rec['samples_per_s']:,.0f} samples/s, {rec['tflops']:.1f} TFLOP/s "
                   f"({100 * rec['utilisation']:.0f}% of peak), peak {rec['peak_mib']:,.0f} MiB, "
                   f"{time.perf_counter() - t0:.0f} s")
    except Exception as exc:  # noqa: BLE001 - one failure must not lose the rest of the suite
        traceback.print_exc()
        rec = {"workload": task.kind, "model": task.model, "variant": task.variant,
               "error": f"{type(exc).__name__}: {exc}"}
    finally:
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    rec["wall_s"] = round(time.perf_counter() - t0, 1)
    return rec


def final_table(records: list[dict[str, Any]]) -> str:
    cols = ["workload", "model", "variant", "batch", "dtype", "token_length", "samples_per_s", "peak_mib",
            "tflops", "utilisation", "peer_h100", "status"]
    rows = []
    for rec in records:
        row = dict(rec)
        row["peer_h100"] = PEER_NOTES.get((rec["workload"], rec["model"]))
        row["status"] = "skipped" if rec.get("skipped") else ("error" if rec.get("error") else "ok")
        rows.append(row)
    return common.markdown_table(rows, cols)


def _write(out: Path, env: dict[str, Any], records: list[dict[str, Any]]) -> None:
    (out / "gpu_results.json").write_text(json.dumps({"environment": env, "results": records}, indent=2) + "\n")
    (out / "gpu_results.md").write_text(f"# GPU suite — {env['date']} — {env.get('gpu', env['cpu'])}\n\n"
                                        f"torch {env['torch']}, CUDA {env.get('cuda')}, open_clip {env.get('open_clip')}"
                                        f", bf16 matmul peak {env['matmul_peak']['tflops']:.1f} TFLOP/s\n\n"
                                        f"{final_table(records)}\n")


if __name__ == "__main__":
    raise SystemExit(main())
