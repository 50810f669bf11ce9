"""Training-step throughput and peak memory: clipforge (plain and fast paths) beside open_clip and HF.

Each variant is ``impl:opts`` (see workloads.py), e.g. ``ours:`` (plain eager), ``ours:trim,cl``,
``open_clip:``, ``open_clip:compile``, ``hf:``. Peers are skipped when they cannot be imported.
On the CPU every variant runs in a fresh subprocess (peak RSS is per process) and the rounds
alternate the variants, so background load hits all of them alike; on CUDA they run in-process.

    python benchmarks/bench_train.py --models demo-rn ViT-B/32 --batch 128 32
    python benchmarks/bench_train.py --device cuda --amp bf16 --models ViT-B/32 --batch 512 \
        --variants ours:trim,fused,compile open_clip: open_clip:compile
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import workloads  # noqa: E402
from flops import matmul_peak_tflops, model_flops_per_sample  # noqa: E402

DEFAULT_VARIANTS = ["ours:", "ours:trim,cl", "ours:trim,cl,fused", "open_clip:", "hf:"]
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def run_train_workload(model_name: str, variant: str, batch: int, device: str, amp: torch.dtype | None,
                       warmup: int, iters: int, seed: int = 0) -> dict[str, Any]:
    """Build, warm up and time one training workload in this process; returns its record.

    ``peak_mib``: CUDA, the allocator's peak; CPU, the peak RSS above the RSS before the model was
    built (the peer's imports, e.g. torchvision, are loaded before that baseline).
    """
    impl, opts = split_variant(variant)
    workloads.peer_available(impl)
    workloads.preload()  # import the peer's package before the memory baseline
    if "compile" in opts:
        torch._dynamo.reset()  # a fresh compile per workload: no recompile-limit fallbacks to eager
    config = workloads.get_config(model_name)
    images, tokens = workloads.synthetic_batch(batch, config, seed, trim="trim" in opts, device=device)
    rss_before = common.current_rss_mib()
    common.reset_peak_memory(device)
    model = workloads.build_model(impl, model_name, device)
    step = workloads.make_train_step(impl, model, device, amp, opts)
    times = common.time_iterations(lambda: step(images, tokens), device, warmup, iters)
    peak = common.peak_memory_mib(device) - (0 if device.startswith("cuda") else rss_before)
    loss = float(step(images, tokens))  # one read-back, after timing: the loss must be finite
    return workloads.result_record(
        workload="train", model=model_name, variant=variant, impl=impl, batch=batch, device=device,
        dtype=str(amp).replace("torch.", "") if amp else "fp32", token_length=tokens.shape[1],
        params=workloads.num_parameters(model), times_s=[round(t, 5) for t in times], peak_mib=round(peak, 1),
        rss_before_mib=None if device.startswith("cuda") else round(rss_before, 1), loss=loss)


def split_variant(variant: str) -> tuple[str, frozenset[str]]:
    impl, _, opts = variant.partition(":")
    return impl, workloads.parse_opts(opts)


def flops_per_sample(model_name: str, trim: bool, device: str) -> dict[str, float]:
    """FLOPs of the workload as fed (trimmed tokens cost less), counted on a batch of 2."""
    model = workloads.build_model("ours", model_name, device)
    images, tokens = workloads.synthetic_batch(2, model.config, seed=0, trim=trim, device=device)
    return model_flops_per_sample(model, images, tokens)


def summarise(records: list[dict[str, Any]], peak_tflops: float | None,
              flops: dict[tuple[str, bool], dict[str, float]]) -> list[dict[str, Any]]:
    def flops_of(row: dict[str, Any]) -> float | None:
        trimmed = row["token_length"] < workloads.get_config(row["model"]).text.context_length
        f = flops.get((row["model"], trimmed))
        return f["train_step"] if f else None

    return common.summarise(records, ("model", "variant", "impl", "batch", "dtype", "token_length", "params"),
                            peak_tflops, flops_of)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["demo-rn", "ViT-B/32"])
    p.add_argument("--batch", nargs="+", type=int, default=[128, 32], help="one per model (or one for all)")
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=sorted(AMP), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=2, help="CPU: alternating rounds of subprocesses")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="train")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = AMP[args.amp or ("bf16" if args.device.startswith("cuda") else "fp32")]
    if args.worker:
        rec = run_train_workload(args.models[0], args.variant, args.batch[0], args.device, amp, args.warmup, args.iters)
        print(json.dumps(rec))
        return 0
    env = common.environment(args.device)
    # The peak is measured before and after the runs and the higher kept: on a shared CPU one
    # measurement under load reads low (and would inflate the utilisation).
    peak_before = matmul_peak_tflops(args.device)
    batches = args.batch * len(args.models) if len(args.batch) == 1 else args.batch
    variants = [v for v in args.variants if workloads.peer_available(v.partition(":")[0])]
    skipped = sorted(set(args.variants) - set(variants))
    records = []
    for model_name, batch in zip(args.models, batches):
        records += _run_model(args, model_name, batch, variants, amp)
    flops = {(m, t): flops_per_sample(m, t, args.device) for m in args.models for t in (False, True)}
    peak = max(peak_before, matmul_peak_tflops(args.device), key=lambda p: p["tflops"])
    env["matmul_peak"] = peak
    rows = summarise(records, peak["tflops"], flops)
    notes = [f"skipped (not importable here): {', '.join(skipped)}"] if skipped else []
    notes.append("peak_mib: CUDA max_memory_allocated; CPU peak RSS (VmHWM) above the RSS before the model "
                 "was built, one fresh process per run. speedup/mem_ratio: vs the row named in 'vs' (JSON)")
    notes.append(f"matmul peak {peak['tflops']:.3f} TFLOP/s ({peak['dtype']} {peak['size']}³)")
    cols = ["model", "variant", "batch", "dtype", "token_length", "samples_per_s", "speedup", "speedup_rounds", "peak_mib",
            "mem_ratio", "gflop_per_sample", "tflops", "utilisation"]
    json_path, md_path = common.write_results(args.name, env, rows, cols, notes, args.out)
    print(common.markdown_table(rows, cols))
    print(f"wrote {json_path} and {md_path}")
    return 0


def _run_model(args: argparse.Namespace, model_name: str, batch: int, variants: list[str],
               amp: torch.dtype | None) -> list[dict[str, Any]]:
    isolate = not args.device.startswith("cuda")
    if workloads.get_config(model_name).vision.kind != "vit":  # transformers has no ModifiedResNet
        variants = [v for v in variants if not v.startswith("hf:")]
    worker_args = ["--models", model_name, "--batch", str(batch), "--device", args.device, "--amp", args.amp or "fp32",
                   "--warmup", str(args.warmup), "--iters", str(args.iters)]
    worker_args += ["--threads", str(args.threads)] if args.threads else []

    def in_process(variant: str) -> dict[str, Any]:
        try:
            return run_train_workload(model_name, variant, batch, args.device, amp, args.warmup, args.iters)
        finally:
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()

    records = common.run_rounds(Path(__file__), worker_args, variants, args.rounds if isolate else 1, isolate,
                                in_process, f"train {model_name} batch {batch}")
    for rec in records:
        rec.setdefault("model", model_name)
    return records


if __name__ == "__main__":
    raise SystemExit(main())
