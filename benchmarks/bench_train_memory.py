"""Training memory per technique (paper, section 2.5), and what it comes to at the paper's batch of 32,768.

Three parts, written to ``results/train_memory_<date>_<host>.{json,md}``:

1. Exact, at full size: bytes per parameter of the weights, gradients and Adam statistics of ViT-B/32
   (and ViT-L/14) for each option, from the tensors themselves after one optimizer step.
2. Measured: peak memory of two optimizer steps of ViT-B/32 (full widths and resolution, ``--layers``
   blocks per tower) through exact accumulation (``--micro-batch`` × ``--accum``), each technique on
   and off; on a CPU the peak RSS of a fresh process per run (CUDA: the allocator's peak), over the
   first forward and backward (weights, gradients, activations: no optimizer state yet) and over the
   whole run. Each variant runs at the micro-batch and at twice it: the difference of the first peaks
   per sample is the activation cost per sample.
3. Scaled: per-GPU memory of ViT-B/32 at a global batch of 32,768 on P GPUs with micro-batch b:
   persistent (part 1) + b × activations per sample (part 2, × 12 / layers) + the loss's buffers
   (rows 32,768 / P × columns 32,768 × bytes per logit, measured here) + the feature cache.

    python benchmarks/bench_train_memory.py                 # reduced size: 2 blocks per tower, 8 (and 16) × 2 samples
    python benchmarks/bench_train_memory.py --tiny          # a smoke run (tiny-vit), seconds
    python benchmarks/bench_train_memory.py --device cuda   # on a GPU: the allocator's peak
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# cumulative (the paper's system is the last), then single techniques against the fp32 baseline
VARIANTS = {
    "fp32": {},
    "+bf16 autocast": {"dtype": "bf16"},
    "+checkpointing": {"dtype": "bf16", "ckpt": True},
    "+bf16 Adam statistics": {"dtype": "bf16", "ckpt": True, "moments": "bf16"},
    "+bf16 text weights (SR)": {"dtype": "bf16", "ckpt": True, "moments": "bf16", "text": "bf16"},
    "checkpointing only": {"ckpt": True},
    "bf16 statistics only": {"moments": "bf16"},
}
GLOBAL_BATCH, FULL_LAYERS = 32768, 12


def _model(name: str, layers: int | None, opts: dict, device: str):
    from clipforge.factory import create_model
    from clipforge.train.losses import LossConfig, build_loss
    from clipforge.train.objective import TrainModel
    from clipforge.train.precision import PrecisionConfig, store_towers

    changes = {"vision": {"layers": layers}, "text": {"layers": layers}} if layers else {}
    clip = create_model(name, **changes)
    store_towers(clip, PrecisionConfig(dtype=opts.get("dtype", "fp32"), text_weights=opts.get("text", "fp32")))
    clip.set_grad_checkpointing(bool(opts.get("ckpt")))
    return TrainModel(clip, build_loss(LossConfig.variant({})())).to(device).train()


def _optimizer(model, opts: dict):
    from clipforge.train.optim import OptimConfig, build_optimizer

    return build_optimizer(model, OptimConfig(moment_dtype=opts.get("moments", "fp32")), (0.98, 1e-6))


def _batches(model, micro: int, accum: int, device: str):
    g = torch.Generator().manual_seed(0)
    size, context = model.clip.image_size, model.clip.config.text.context_length
    out = []
    for _ in range(accum):
        tokens = torch.randint(1, 49000, (micro, context), generator=g)
        tokens[:, 20:] = 0
        tokens[:, 19] = 49407  # EOT at 20 tokens
        out.append((torch.randn(micro, 3, size, size, generator=g), tokens))
    return out


def worker(args) -> dict:
    """One optimizer step of one variant (in a fresh process on a CPU: its peak RSS is this step's)."""
    from clipforge.train.accumulate import StepContext, forward_backward
    from clipforge.train.lowprec import parameter_bytes, state_bytes

    opts, device = VARIANTS[args.variant], args.device
    torch.set_num_threads(args.threads)
    common.reset_peak_memory(device)
    start = common.current_rss_mib() if device == "cpu" else 0.0
    model = _model(args.model, args.layers, opts, device)
    optimizer = _optimizer(model, opts)
    dtype = {"bf16": torch.bfloat16}.get(opts.get("dtype"))
    autocast = (lambda: torch.autocast(device.split(":")[0], dtype=dtype)) if dtype else None
    ctx = StepContext(torch.device(device), **({"autocast": autocast} if autocast else {}), trim_tokens=True)
    for step in range(2):  # the second step holds the optimizer's state during its forward and backward
        optimizer.zero_grad(set_to_none=True)
        forward_backward(model, _batches(model, args.micro_batch, args.accum, device), ctx)
        if step == 0:  # the high-water mark so far: weights, gradients and one step's activations
            peak_backward = common.peak_memory_mib(device) - start
        optimizer.step()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    return {"variant": args.variant, "micro_batch": args.micro_batch, "weights_MiB": parameter_bytes(model) / 2**20,
            "grads_MiB": grads / 2**20, "adam_MiB": state_bytes(optimizer) / 2**20,
            "peak_MiB": common.peak_memory_mib(device) - start, "peak_forward_backward_MiB": peak_backward}


def loss_worker(args) -> dict:
    """Bytes per logit of the CLIP loss's forward + backward (rows × columns logits, both directions)."""
    from clipforge.train.losses.clip import clip_loss

    torch.set_num_threads(args.threads)
    rows, cols, dim = 1024, 8192, 512
    g = torch.Generator().manual_seed(0)
    feats = [torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1).to(args.device) for n in (rows, rows, cols, cols)]
    for f in feats[:2]:
        f.requires_grad_()
    common.reset_peak_memory(args.device)
    start = common.current_rss_mib() if args.device == "cpu" else 0.0
    loss, _ = clip_loss(feats[0], feats[1], torch.tensor(14.0, device=args.device),
                        all_image_features=feats[2], all_text_features=feats[3])
    loss.backward()
    peak = (common.peak_memory_mib(args.device) - start) * 2**20
    return {"variant": "loss", "bytes_per_logit": peak / (rows * cols)}


def exact_bytes_per_parameter(model_name: str) -> list[dict]:
    """Part 1 at full size: bytes per parameter from the tensors after one step (zero gradients)."""
    out = []
    for label, opts in (("fp32 weights, fp32 statistics", {}), ("fp32 weights, bf16 statistics", {"moments": "bf16"}),
                        ("fp32 weights, fp16 statistics", {"moments": "fp16"}),
                        ("bf16 text weights, bf16 statistics", {"moments": "bf16", "text": "bf16", "dtype": "bf16"})):
        from clipforge.train.lowprec import parameter_bytes, state_bytes

        model = _model(model_name, None, opts, "cpu")
        optimizer = _optimizer(model, opts)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        n = sum(p.numel() for p in model.parameters())
        weights = parameter_bytes(model)
        out.append({"model": model_name, "option": label, "parameters": n, "weights_B_per_param": weights / n,
                    "grads_B_per_param": weights / n, "adam_B_per_param": state_bytes(optimizer) / n,
                    "total_B_per_param": (2 * weights + state_bytes(optimizer)) / n})
        del model, optimizer
    return out


def scaled(measured: dict, exact: list[dict], bytes_per_logit: float, layers: int, micro: int) -> list[dict]:
    """Part 3: per-GPU GiB at 32,768 for ViT-B/32, from the measured parts."""
    params = exact[0]["parameters"]
    persistent = {"fp32": exact[0], "bf16 statistics": exact[1], "bf16 text weights": exact[3]}
    rows = []
    for variant, record in measured.items():
        if "error" in record or variant == "loss" or "activations_per_sample_MiB" not in record:
            continue
        opts = VARIANTS[variant]
        key = "bf16 text weights" if opts.get("text") else "bf16 statistics" if opts.get("moments") else "fp32"
        fixed = persistent[key]["total_B_per_param"] * params
        activations = record["activations_per_sample_MiB"] * 2**20 * FULL_LAYERS / layers * micro
        row = {"variant": variant, "option": f"{exact[0]['model']} at 32,768", "micro_batch": micro}
        for gpus in (8, 64, 256):
            local = GLOBAL_BATCH // gpus
            loss = local * GLOBAL_BATCH * bytes_per_logit + GLOBAL_BATCH * 512 * 2 * 4 * 2  # logits + feature cache
            row[f"{gpus} GPUs GiB"] = (fixed + activations + loss) / 2**30
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="fp32")
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--layers", type=int, default=2, help="blocks per tower (full widths and resolution)")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny-vit, a smoke run")
    parser.add_argument("--scale-micro-batch", type=int, default=256, help="micro-batch of the scaled table")
    args = parser.parse_args()
    if args.tiny:
        args.model, args.layers = "tiny-vit", None
    if args.worker:
        print(json.dumps(loss_worker(args) if args.variant == "loss" else worker(args)))
        return
    env = common.environment(args.device)
    script = Path(__file__).resolve()
    base = ["--model", args.model, "--accum", str(args.accum),
            "--threads", str(args.threads), "--device", args.device] + (["--layers", str(args.layers)] if args.layers else [])
    measured = {}
    for variant in VARIANTS:
        runs = []
        for micro in (args.micro_batch, 2 * args.micro_batch):
            common.log(f"measuring {variant}, micro-batch {micro}")
            runs.append(common.run_isolated(script, [*base, "--micro-batch", str(micro), "--variant", variant],
                                            env=common.MEMORY_ENV))
        record = dict(runs[0], variant=variant)
        if not any("error" in r for r in runs):  # the slope removes what does not grow with the batch
            record["activations_per_sample_MiB"] = (
                runs[1]["peak_forward_backward_MiB"] - runs[0]["peak_forward_backward_MiB"]) / args.micro_batch
            record["peak_MiB_2x"] = runs[1]["peak_MiB"]
        measured[variant] = record
    common.log("measuring the loss")
    measured["loss"] = common.run_isolated(script, [*base, "--variant", "loss"], env=common.MEMORY_ENV)
    measured["loss"].setdefault("variant", "loss")
    exact = exact_bytes_per_parameter("ViT-B/32" if not args.tiny else "tiny-vit")
    layers = args.layers or 2
    bpl = measured["loss"].get("bytes_per_logit", float("nan"))
    table = scaled(measured, exact, bpl, layers, args.scale_micro_batch)
    records = [*measured.values(), *exact, *table]
    notes = [f"measured: {args.model}, {args.layers or 'all'} blocks per tower, micro-batch {args.micro_batch} × "
             f"{args.accum} (exact accumulation), one optimizer step per fresh process",
             f"loss: {bpl:.1f} bytes per logit (forward + backward, both directions)",
             "scaled: ViT-B/32 at 32,768 = persistent + micro-batch × activations/sample × 12/layers + "
             "(32,768/P) × 32,768 × bytes/logit + the feature cache (32,768 × 512 × 2 towers × fp32 × value+grad)"]
    columns = ["variant", "option", "micro_batch", "peak_forward_backward_MiB", "peak_MiB", "peak_MiB_2x", "weights_MiB", "grads_MiB", "adam_MiB", "activations_per_sample_MiB",
               "weights_B_per_param", "adam_B_per_param", "total_B_per_param", "8 GPUs GiB", "64 GPUs GiB",
               "256 GPUs GiB", "bytes_per_logit", "error"]
    json_path, md_path = common.write_results("train_memory", env, records, columns, notes)
    print(common.markdown_table(records, columns))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
