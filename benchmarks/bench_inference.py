"""encode_image / encode_text throughput and peak memory: clipforge beside open_clip and HF.

Variants as in bench_train.py (``impl:opts``); for inference ``ours`` takes ``fold`` (BatchNorm
folded into the convolutions), ``cl`` (channels_last ResNet), ``trim`` (text: tokens cut after the
longest caption) and ``compile`` (clipforge.fastpath.optimize_for_inference). Eval mode, no
autograd (inference_mode). On CUDA the default precision is bf16 weights (``--cast``) or autocast.

    python benchmarks/bench_inference.py --models demo-rn ViT-B/32 --batch 256 64
    python benchmarks/bench_inference.py --device cuda --amp bf16 --cast --models ViT-B/32 --batch 1024
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
from bench_train import AMP, split_variant  # noqa: E402
from flops import count_flops, matmul_peak_tflops  # noqa: E402

DEFAULT_VARIANTS = ["ours:", "ours:fold,cl,trim", "open_clip:", "hf:"]


def run_encode_workload(model_name: str, tower: str, variant: str, batch: int, device: str,
                        amp: torch.dtype | None, cast: bool, warmup: int, iters: int) -> dict[str, Any]:
    """Build, warm up and time one encode workload in this process; returns its record."""
    impl, opts = split_variant(variant)
    workloads.peer_available(impl)
    workloads.preload()
    if "compile" in opts:
        torch._dynamo.reset()
    config = workloads.get_config(model_name)
    images, tokens = workloads.synthetic_batch(batch, config, seed=0, trim="trim" in opts, device=device)
    inputs = images if tower == "image" else tokens
    if cast and amp is not None and tower == "image":
        inputs = inputs.to(amp)
    rss_before = common.current_rss_mib()
    common.reset_peak_memory(device)
    model = workloads.build_model(impl, model_name, device)
    params = workloads.num_parameters(model)
    encode = workloads.make_encoder(impl, model, tower, amp, cast, opts)
    del model  # ours encodes with an optimized copy: keep only what the encoder holds
    times = common.time_iterations(lambda: encode(inputs), device, warmup, iters)
    peak = common.peak_memory_mib(device) - (0 if device.startswith("cuda") else rss_before)
    out = encode(inputs)
    if not torch.isfinite(out.float()).all():
        raise RuntimeError(f"{variant} {tower} produced non-finite features")
    precision = (str(amp).replace("torch.", "") + (" weights" if cast else " autocast")) if amp else "fp32"
    return workloads.result_record(
        workload=f"encode_{tower}", model=model_name, variant=variant, impl=impl, batch=batch, device=device,
        dtype=precision, token_length=tokens.shape[1] if tower == "text" else None, params=params,
        times_s=[round(t, 5) for t in times], peak_mib=round(peak, 1))


def flops_per_sample(model_name: str, tower: str, trim: bool, device: str) -> float:
    model = workloads.build_model("ours", model_name, device)
    images, tokens = workloads.synthetic_batch(2, model.config, seed=0, trim=trim, device=device)
    with torch.no_grad():
        fn = (lambda: model.encode_image(images)) if tower == "image" else (lambda: model.encode_text(tokens))
        return count_flops(fn) / 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["demo-rn", "ViT-B/32"])
    p.add_argument("--batch", nargs="+", type=int, default=[256, 64], help="one per model (or one for all)")
    p.add_argument("--towers", nargs="+", choices=["image", "text"], default=["image", "text"])
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=sorted(AMP), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--cast", action="store_true", help="convert the weights to --amp instead of autocast")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--name", default="inference")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = AMP[args.amp or ("bf16" if args.device.startswith("cuda") else "fp32")]
    if args.worker:
        rec = run_encode_workload(args.models[0], args.towers[0], args.variant, args.batch[0], args.device, amp,
                                  args.cast, args.warmup, args.iters)
        print(json.dumps(rec))
        return 0
    env = common.environment(args.device)
    # The peak is measured before and after the runs and the higher kept: on a shared CPU one
    # measurement under load reads low (and would inflate the utilisation).
    peak_before = matmul_peak_tflops(args.device)
    batches = args.batch * len(args.models) if len(args.batch) == 1 else args.batch
    variants = [v for v in args.variants if workloads.peer_available(v.partition(":")[0])]
    skipped = sorted(set(args.variants) - set(variants))
    records, flops = [], {}
    for model_name, batch in zip(args.models, batches):
        for tower in args.towers:
            records += _run(args, model_name, tower, batch, variants, amp)
            for trim in (False, True):
                flops[(model_name, f"encode_{tower}", trim)] = flops_per_sample(model_name, tower, trim, args.device)
    peak = max(peak_before, matmul_peak_tflops(args.device), key=lambda p: p["tflops"])
    env["matmul_peak"] = peak
    rows = []
    for workload in sorted({r.get("workload") for r in records if "workload" in r}):
        subset = [r for r in records if r.get("workload") == workload]
        rows += common.summarise(subset, ("workload", "model", "variant", "impl", "batch", "dtype", "token_length",
                                          "params"), peak["tflops"],
                                 lambda row: flops.get((row["model"], row["workload"], _trimmed(row))))
    notes = [f"skipped (not importable here): {', '.join(skipped)}"] if skipped else []
    notes.append("peak_mib: CUDA max_memory_allocated; CPU peak RSS above the RSS before the model was built")
    notes.append(f"matmul peak {peak['tflops']:.3f} TFLOP/s ({peak['dtype']} {peak['size']}³)")
    cols = ["workload", "model", "variant", "batch", "dtype", "token_length", "samples_per_s", "speedup", "speedup_rounds", "peak_mib",
            "mem_ratio", "gflop_per_sample", "tflops", "utilisation"]
    json_path, md_path = common.write_results(args.name, env, rows, cols, notes, args.out)
    print(common.markdown_table(rows, cols))
    print(f"wrote {json_path} and {md_path}")
    return 0


def _trimmed(row: dict[str, Any]) -> bool:
    length = row.get("token_length")
    return length is not None and length < workloads.get_config(row["model"]).text.context_length


def _run(args: argparse.Namespace, model_name: str, tower: str, batch: int, variants: list[str],
         amp: torch.dtype | None) -> list[dict[str, Any]]:
    isolate = not args.device.startswith("cuda")
    if workloads.get_config(model_name).vision.kind != "vit":
        variants = [v for v in variants if not v.startswith("hf:")]
    worker_args = ["--models", model_name, "--towers", tower, "--batch", str(batch), "--device", args.device,
                   "--amp", args.amp or "fp32", "--warmup", str(args.warmup), "--iters", str(args.iters)]
    worker_args += (["--cast"] if args.cast else []) + (["--threads", str(args.threads)] if args.threads else [])

    def in_process(variant: str) -> dict[str, Any]:
        try:
            return run_encode_workload(model_name, tower, variant, batch, args.device, amp, args.cast,
                                       args.warmup, args.iters)
        finally:
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()

    records = common.run_rounds(Path(__file__), worker_args, variants, args.rounds if isolate else 1, isolate,
                                in_process, f"encode_{tower} {model_name} batch {batch}")
    for rec in records:
        rec.setdefault("model", model_name)
        rec.setdefault("workload", f"encode_{tower}")
    return records


if __name__ == "__main__":
    raise SystemExit(main())
