"""Loss curves with half-precision Adam statistics and bf16 text weights against float32 (paper, section 2.5).

Trains the demo model (``demo-rn``) on the synthetic world with the same data, seed and schedule for
each variant, all in bf16 autocast, so only what is *stored* in half precision differs:

* float32 weights and statistics (the reference);
* bf16 statistics; fp16 statistics (scaled, square root of the second moment);
* bf16 text tower, stochastic rounding; the same with round-to-nearest (updates below half a bf16
  step are lost: LayerNorm gains of 1.0 move by lr ≈ 1e-3 a step, under half a step of 2^-7);
* the paper's combination: bf16 statistics and a stochastically rounded bf16 text tower;
* float32 with another seed: how far two float32 runs drift apart anyway, the yardstick for the rest.

Writes ``results/lowprec_curves_<date>_<host>.{json,md,png}`` (the plot: the curves, smoothed, and each
variant's difference from the reference). Losses do not depend on the machine's load.

    python benchmarks/bench_lowprec_curves.py --steps 300          # about 3 minutes a variant on 2 quiet cores
    python benchmarks/bench_lowprec_curves.py --steps 5 --tiny     # a smoke run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from clipforge.eval.plots import smooth  # noqa: E402

VARIANTS = {
    "fp32 weights + statistics": {},
    "bf16 statistics": {"optim.moment_dtype": "bf16"},
    "fp16 statistics": {"optim.moment_dtype": "fp16"},
    "bf16 text weights, stochastic": {"precision.text_weights": "bf16"},
    "bf16 text weights, nearest": {"precision.text_weights": "bf16", "optim.rounding": "nearest"},
    "paper: bf16 statistics + bf16 text (SR)": {"optim.moment_dtype": "bf16", "precision.text_weights": "bf16"},
    # the yardstick: float32 again with another seed (initialisation, data order), how far runs drift anyway
    "fp32, another seed": {"run.seed": 1, "data.seed": 1},
}


def train(world: Path, out: Path, steps: int, batch: int, threads: int, changes: dict, tiny: bool) -> list[float]:
    from clipforge.train.config import load_config
    from clipforge.train.logging import read_metrics
    from clipforge.train.loop import Trainer

    overrides = {
        "run.steps": steps, "run.seed": 0, "data.seed": 0, "run.threads": threads, "run.out": str(out),
        "model.name": "tiny-rn" if tiny else "demo-rn", "model.text.context_length": 32,
        "tokenizer.source": "learn", "tokenizer.vocab_size": 2048, "tokenizer.captions": str(world / "train" / "captions.txt"),
        "data.shards": str(world / "train" / f"{{00000..{len(list((world / 'train').glob('*.tar'))) - 1:05d}}}.tar"), "data.batch_size": batch, "data.workers": 1,
        "optim.lr": 1e-3, "optim.weight_decay": 0.1, "schedule.warmup_steps": max(1, steps // 12),
        "precision.dtype": "bf16", "precision.channels_last": True, "run.crop_scale": [0.8, 1.0],
        "checkpoint.every": 0, "log.every": max(1, steps // 10), "log.tensorboard": False, **changes,
    }
    Trainer(load_config(None, overrides), echo=lambda m: None).train()
    return [r["loss"] for r in read_metrics(out)]


def plot(curves: dict[str, list[float]], path: Path, window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 8), sharex=True, height_ratios=(2, 1))
    reference = smooth(curves["fp32 weights + statistics"], window)
    for name, losses in curves.items():
        s = smooth(losses, window)
        style = {"linewidth": 2.2 if name.startswith("fp32 weights") else 1.3, "linestyle": ":" if "seed" in name else "-",
                 "color": "black" if "seed" in name else None}
        top.plot(range(1, len(s) + 1), s, label=name, **style)
        bottom.plot(range(1, len(s) + 1), [a - b for a, b in zip(s, reference)], label=name, **style)
    top.set_ylabel(f"training loss (mean of {window} steps)")
    top.set_title("demo-rn on the synthetic world, bf16 autocast: what is stored in half precision")
    top.legend(fontsize=8)
    bottom.axhline(0, color="black", linewidth=0.8)
    bottom.set_ylabel("difference from fp32")
    bottom.set_xlabel("optimizer step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--world", type=Path, help="a synthetic world (default: generated in a temporary folder)")
    parser.add_argument("--tiny", action="store_true", help="tiny-rn, a smoke run")
    args = parser.parse_args()
    env = common.environment("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        world = args.world
        if world is None:
            from clipforge.data.synthetic import WorldConfig, generate_world

            world = Path(tmp) / "world"
            common.log("generating the synthetic world")
            generate_world(world, WorldConfig(num_train=8 * 600, num_val=0, shard_size=600, eval_per_class=1,
                                              num_retrieval=4), workers=1)
        curves = {}
        for name, changes in VARIANTS.items():
            common.log(f"training: {name}")
            curves[name] = train(world, Path(tmp) / f"run{len(curves)}", args.steps, args.batch, args.threads, changes,
                                 args.tiny)
    window = max(1, args.steps // 15)
    reference = curves["fp32 weights + statistics"]
    tail = max(1, args.steps // 5)
    records = []
    for name, losses in curves.items():
        records.append({"variant": name, "final_loss_mean_last_20pct": sum(losses[-tail:]) / tail,
                        "mean_abs_diff_from_fp32": sum(abs(a - b) for a, b in zip(losses, reference)) / len(losses),
                        "losses": losses})
    png = common.result_paths("lowprec_curves", env)[0].with_suffix(".png")
    columns = ["variant", "final_loss_mean_last_20pct", "mean_abs_diff_from_fp32"]
    notes = [f"{args.steps} steps, batch {args.batch}, {'tiny-rn' if args.tiny else 'demo-rn'}, bf16 autocast, lr 1e-3 "
             f"cosine, the same data and seed for every variant; plot: {png.name}"]
    json_path, md_path = common.write_results("lowprec_curves", env, records, columns, notes)
    plot(curves, png, window)
    print(common.markdown_table(records, columns))
    print(f"wrote {json_path}, {md_path} and {png}")


if __name__ == "__main__":
    main()
