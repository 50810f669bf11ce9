"""The whole curation path on the synthetic world, and its measured effect on rare classes.

1. A pool with skewed caption frequencies: the synthetic world's training images, kept with a
   probability that falls steeply with their rarest shape (two shapes common, four rare), written
   as local images + ``pool.parquet`` (path, caption).
2. Queries: the world's class names as a ready list (shapes, colours, colour-shape bigrams, as WIT's
   WordNet/title lists), then ``clipforge data curate`` with a per-query cap.
3. A random subset of the pool of exactly the curated size.
4. The same recipe trains one model on each (demo-rn from scratch, same steps, seed, tokenizer).
5. Zero-shot shape classification on the world's eval set, per class: the rare shapes are where
   balancing should help. A plot and a table go to ``benchmarks/results/``.

    python benchmarks/curate_effect.py --out runs/curate_effect          # ~12 min on 2 quiet cores (600 steps x 2)
    python benchmarks/curate_effect.py --out /tmp/ce --steps 30 --world 3000 --tag smoke
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

WEIGHTS = (1.0, 0.7, 0.08, 0.05, 0.035, 0.025)  # P(keep) by the rarest shape in the image, by frequency rank


def make_pool(world: Path, out: Path, seed: int) -> tuple[Path, dict[str, float]]:
    """Skewed pool from the world's training shards: images to files, rows to pool.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipforge.data.render import SHAPES

    order = list(SHAPES)
    random.Random(seed).shuffle(order)
    weight = dict(zip(order, WEIGHTS))
    rng = random.Random(seed + 1)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for shard in sorted((world / "train").glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {}
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for key, files in sorted(members.items()):
            meta = json.loads(files["json"])
            if rng.random() >= min(weight[o["shape"]] for o in meta["objects"]):
                continue
            (out / "images" / f"{key}.jpg").write_bytes(files["jpg"])
            rows.append({"path": f"images/{key}.jpg", "caption": files["txt"].decode(), "key": key,
                         "shapes": ",".join(sorted({o["shape"] for o in meta["objects"]}))})
    pq.write_table(pa.Table.from_pylist(rows), out / "pool.parquet")
    return out / "pool.parquet", weight


def class_queries(manifest: dict, path: Path) -> Path:
    from clipforge.data.queries import Query, merge_queries, write_queries

    names = manifest["shapes"] + manifest["colours"] + ["disk", "plus sign", "violet"]
    names += [f"{c} {s}" for c in manifest["colours"] for s in manifest["shapes"]]
    return write_queries(merge_queries([[Query(n, "list:classnames") for n in names]]), path)


def to_shards(rows: list[dict], pool_dir: Path, out: Path) -> Path:
    from clipforge.data.convert import ConvertConfig, convert

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "pairs.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "caption"])
        writer.writerows([[str((pool_dir / r["path"]).resolve()), r["caption"]] for r in rows])  # the CSV reader resolves against its own folder
    convert(str(out / "pairs.csv"), out / "shards", ConvertConfig("csv", 1000))
    return out / "shards"


def train(shards: Path, captions: Path, run: Path, steps: int, seed: int, model: str) -> Path:
    from clipforge.train.config import load_config
    from clipforge.train.distributed import destroy_distributed
    from clipforge.train.loop import Trainer

    names = sorted(p.name for p in shards.glob("*.tar"))
    recipe = {
        "run": {"steps": steps, "seed": seed, "threads": 2, "out": str(run), "crop_scale": [0.8, 1.0]},
        "model": {"name": model},
        "tokenizer": {"source": "learn", "vocab_size": 2048, "captions": str(captions)},
        "data": {"shards": "::".join(str(shards / n) for n in names), "batch_size": 64, "workers": 1, "seed": seed},
        "optim": {"lr": 1e-3, "weight_decay": 0.1}, "schedule": {"warmup_steps": max(1, steps // 12)},
        "checkpoint": {"every": 0}, "log": {"every": 50, "tensorboard": False},
    }
    run.mkdir(parents=True, exist_ok=True)
    (run.parent / f"{run.name}_recipe.json").write_text(json.dumps(recipe, indent=1))
    try:
        Trainer(load_config(run.parent / f"{run.name}_recipe.json"), echo=common.log).train()
    finally:
        destroy_distributed()
    return run / "final"


def shape_accuracy(model_dir: Path, world: Path) -> dict:
    import clipforge
    from clipforge.eval.zero_shot import zero_shot_accuracy

    model, preprocess, tokenizer = clipforge.load(model_dir)
    metrics = zero_shot_accuracy(model, tokenizer, world / "eval" / "shape", preprocess=preprocess)
    names = json.loads((world / "eval" / "shape" / "classnames.json").read_text())
    names = names if isinstance(names, list) else list(names.values())
    return {"acc1": metrics["acc1"], "per_class": dict(zip(names, metrics["per_class_recall"]))}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    shapes = result["shapes_by_pool_frequency"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    x = np.arange(len(shapes))
    for i, (name, colour) in enumerate((("random", "#999999"), ("balanced", "#1f77b4"))):
        counts = [result["subsets"][name]["shape_counts"].get(s, 0) for s in shapes]
        top.bar(x + (i - 0.5) * 0.38, counts, 0.38, label=f"{name} subset", color=colour)
        acc = [100 * result["zero_shot"][name]["per_class"][s] for s in shapes]
        bottom.bar(x + (i - 0.5) * 0.38, acc, 0.38, label=f"trained on {name}", color=colour)
    top.set_ylabel("training images containing the shape")
    top.set_yscale("log")
    top.legend()
    bottom.axhline(100 / len(shapes), color="k", lw=0.8, ls=":", label="chance")
    bottom.set_ylabel("zero-shot accuracy (%)")
    bottom.set_xticks(x, [f"{s}\n(pool {result['pool_shape_counts'][s]})" for s in shapes])
    bottom.legend(loc="upper left", fontsize=8)
    top.set_title(f"Query-balanced vs random subset of equal size ({result['subset_size']} pairs), "
                  f"{result['steps']} steps")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/curate_effect")
    parser.add_argument("--world", type=int, default=24_000, help="world training images the pool is drawn from")
    parser.add_argument("--cap", type=int, default=40)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="demo-rn")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    result = run(Path(args.out), args)
    env = common.environment("cpu")
    name = "curate_effect" + (f"_{args.tag}" if args.tag else "")
    records = [{"model": k, "subset": result["subset_size"], "shape_acc1": round(100 * v["acc1"], 1),
                "rare_shapes_mean": round(100 * v["rare_mean"], 1),
                **{s: round(100 * v["per_class"][s], 1) for s in result["shapes_by_pool_frequency"]}}
               for k, v in result["zero_shot"].items()]
    json_path, md_path = common.write_results(name, env, records, list(records[0]), result["notes"])
    plot(result, md_path.with_suffix(".png"))
    json_path.write_text(json.dumps({**json.loads(json_path.read_text()), "detail": result}, indent=1))
    print(md_path.read_text())


def run(out: Path, args) -> dict:
    from clipforge.data.curate import CurateConfig, curate
    from clipforge.data.queries import load_query_texts
    from clipforge.data.synthetic import WorldConfig, generate_world

    t0 = time.perf_counter()
    world = out / "world"
    if not (world / "manifest.json").exists():
        generate_world(world, WorldConfig(seed=args.seed, num_train=args.world, num_val=0, eval_per_class=50,
                                          num_retrieval=10), workers=2)
    manifest = json.loads((world / "manifest.json").read_text())
    pool_path, weight = make_pool(world, out / "pool", args.seed)
    import pyarrow.parquet as pq

    pool = pq.read_table(pool_path).to_pylist()
    queries = load_query_texts(class_queries(manifest, out / "queries.tsv"))
    shutil.rmtree(out / "curated", ignore_errors=True)  # the pool was just written again: a new curate job
    curated = curate(str(pool_path), queries, out / "curated", CurateConfig(cap=args.cap), progress=False)
    balanced = pq.read_table(out / "curated" / "selected").to_pylist()
    random_rows = random.Random(args.seed + 2).sample(pool, len(balanced))
    (out / "pool_captions.txt").write_text("\n".join(r["caption"] for r in pool) + "\n")
    shapes = sorted(weight, key=lambda s: -weight[s])

    def shape_counts(rows):
        return {s: sum(1 for r in rows if s in r["shapes"].split(",")) for s in shapes}

    result = {"pool_size": len(pool), "subset_size": len(balanced), "cap": args.cap, "steps": args.steps,
              "keep_probability": weight, "shapes_by_pool_frequency": shapes, "pool_shape_counts": shape_counts(pool),
              "queries": len(queries), "curate_report": curated.report, "subsets": {}, "zero_shot": {}}
    for name, rows in (("random", random_rows), ("balanced", balanced)):
        shards = to_shards(rows, out / "pool", out / name)
        final = train(shards, out / "pool_captions.txt", out / name / "run", args.steps, args.seed, args.model)
        acc = shape_accuracy(final, world)
        acc["rare_mean"] = sum(acc["per_class"][s] for s in shapes[2:]) / len(shapes[2:])
        result["subsets"][name] = {"shape_counts": shape_counts(rows)}
        result["zero_shot"][name] = acc
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["notes"] = [
        f"pool: {len(pool)} pairs from {args.world} world images, keep probability by rarest shape {WEIGHTS}",
        f"queries: {len(queries)} class names (shapes, colours, colour-shape bigrams); cap {args.cap} per query",
        f"both models: {args.model} from scratch, {args.steps} steps of 64, the same seed and tokenizer (learned from "
        "the pool's captions); zero-shot on the world's shape eval set (50 images per class)",
        f"rare shapes = the four rarest in the pool: {', '.join(shapes[2:])}; total {result['seconds']} s",
    ]
    return result


if __name__ == "__main__":
    main()
