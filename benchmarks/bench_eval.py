"""Zero-shot evaluation throughput on a set in CLIP_benchmark's webdataset layout: clipforge vs CLIP_benchmark.

One set of N images (default 1000, 256x256, lossless webp as `clip_benchmark_export_wds` writes,
C classes, CIFAR's 18 templates) is written once; both evaluate it end to end with the same
weights: a random-initialised open_clip ViT-B-32-quickgelu, its state_dict loaded into clipforge's
ViT-B/32 (identical outputs). Timed from reading the set to the metrics:

- clip_benchmark: ``build_wds_dataset`` → ``DataLoader(dataset.batched(B))`` → ``zero_shot_classifier``
  → ``run_classification`` (its ``evaluate`` minus the final metric call, whose ``accuracy`` fails
  under numpy 2: acc1 is computed from its logits here);
- clipforge: ``run_suite(..., "zeroshot")`` on the folder (tar headers indexed, head built, one
  image pass, report and CLIP_benchmark JSON written; plots off).

images/s = N / seconds, median over rounds (implementations alternate); the acc1 of both must agree.
Needs a Python where clipforge (this checkout's src/ is used when it is not installed), open_clip
and clip_benchmark import:

    /work/ocvenv/bin/python benchmarks/bench_eval.py                      # quiet machine: the README figure
    /work/ocvenv/bin/python benchmarks/bench_eval.py --images 64 --rounds 1 --out /tmp/bench   # a smoke run
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:
    import clipforge  # noqa: F401
except ImportError:  # a peer venv without clipforge installed: use this checkout
    sys.path.insert(0, str(HERE.parent / "src"))

import common  # noqa: E402

TEMPLATES = ["a photo of a {c}.", "a blurry photo of a {c}.", "a black and white photo of a {c}.",
             "a low contrast photo of a {c}.", "a high contrast photo of a {c}.", "a bad photo of a {c}.",
             "a good photo of a {c}.", "a photo of a small {c}.", "a photo of a big {c}.", "a photo of the {c}.",
             "a blurry photo of the {c}.", "a black and white photo of the {c}.", "a low contrast photo of the {c}.",
             "a high contrast photo of the {c}.", "a bad photo of the {c}.", "a good photo of the {c}.",
             "a photo of the small {c}.", "a photo of the big {c}."]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_set(root: Path, n: int, size: int, per_shard: int) -> None:
    """A CLIP_benchmark-layout set of random-texture images (webdataset's ShardWriter, keys s%07d)."""
    import webdataset
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    with webdataset.ShardWriter(str(root / "test" / "%d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i in range(n):
            base = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
            image = Image.fromarray(base).resize((size, size), Image.BICUBIC)
            buffer = io.BytesIO()
            image.save(buffer, format="webp", lossless=True)
            sink.write({"__key__": "s%07d" % i, "webp": buffer.getvalue(), "cls": i % len(CLASSES)})
        shards = sink.shard
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")


def models(tmp: Path):
    """(open_clip model, its preprocess, tokenizer), (clipforge model, preprocess, tokenizer): same weights."""
    import open_clip

    import clipforge

    torch.manual_seed(0)
    oc_model, _, oc_pre = open_clip.create_model_and_transforms("ViT-B-32-quickgelu", pretrained=None)
    oc_model.eval()
    torch.save(oc_model.state_dict(), tmp / "weights.pt")
    ours = clipforge.load(str(tmp / "weights.pt"), model="ViT-B/32")
    if ours[2] is None:  # OpenAI's vocabulary: open_clip ships the same merges file
        from clipforge.tokenizer import Tokenizer

        vocab = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
        ours = (ours[0], ours[1], Tokenizer.openai(vocab))
    return (oc_model, oc_pre, open_clip.get_tokenizer("ViT-B-32-quickgelu")), ours


def run_clip_benchmark(root: Path, peer, batch: int, workers: int) -> tuple[float, float]:
    sys.modules.setdefault("requests", types.ModuleType("requests"))  # imported by an unused dataset module
    from clip_benchmark.datasets.builder import build_wds_dataset
    from clip_benchmark.metrics import zeroshot_classification as zc

    model, preprocess, tokenizer = peer
    start = time.perf_counter()
    dataset = build_wds_dataset("bench", transform=preprocess, split="test", data_dir=str(root))
    loader = torch.utils.data.DataLoader(dataset.batched(batch), batch_size=None, shuffle=False, num_workers=workers)
    classifier = zc.zero_shot_classifier(model, tokenizer, dataset.classes, dataset.templates, "cpu", amp=False)
    logits, target = zc.run_classification(model, classifier, loader, "cpu", amp=False)
    acc1 = (logits.argmax(1) == target).float().mean().item()
    return time.perf_counter() - start, acc1


def run_clipforge(root: Path, ours, batch: int, workers: int, out: Path) -> tuple[float, float]:
    from clipforge.eval import EvalConfig, run_suite

    config = EvalConfig(batch_size=batch, num_workers=workers, cache_dir=None, plots=False, progress=False)
    start = time.perf_counter()
    report = run_suite(*ours, root, out, "zeroshot", config, echo=None)
    return time.perf_counter() - start, report["zeroshot"][root.name]["acc1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--per-shard", type=int, default=250)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, the same for both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--name", default="eval_wds_zeroshot")
    args = parser.parse_args()
    env = common.environment("cpu")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "wds_bench"
        common.log(f"writing {args.images} images ({args.size} px webp) in CLIP_benchmark's layout")
        write_set(root, args.images, args.size, args.per_shard)
        peer, ours = models(tmp)
        times: dict[str, list[float]] = {"clip_benchmark": [], "clipforge": []}
        accs: dict[str, float] = {}
        for r in range(args.rounds):
            for label in times:
                if label == "clip_benchmark":
                    seconds, acc = run_clip_benchmark(root, peer, args.batch, args.workers)
                else:
                    seconds, acc = run_clipforge(root, ours, args.batch, args.workers, tmp / f"out{r}")
                times[label].append(seconds)
                accs[label] = acc
                common.log(f"round {r + 1}/{args.rounds} {label}: {seconds:.1f} s, {args.images / seconds:.1f} images/s, acc1 {acc:.4f}")
    records = []
    for label, values in times.items():
        seconds = statistics.median(values)
        records.append({"implementation": label, "images": args.images, "seconds": seconds,
                        "images_per_s": args.images / seconds, "acc1": accs[label], "rounds": values})
    ratios = sorted(p / o for p, o in zip(times["clip_benchmark"], times["clipforge"]))
    records[1]["speedup"] = statistics.median(ratios)
    notes = [f"ViT-B/32 (random weights, identical in both), fp32 CPU, batch {args.batch}, {args.workers} workers, "
             f"{args.images} images {args.size} px lossless webp in {-(-args.images // args.per_shard)} shards, "
             f"{len(CLASSES)} classes x {len(TEMPLATES)} templates", f"acc1 agree: {abs(accs['clipforge'] - accs['clip_benchmark']) < 1e-9}",
             "speedup: median over rounds of clip_benchmark seconds / clipforge seconds (same round)"]
    paths = common.write_results(args.name, env, records, ["implementation", "images", "seconds", "images_per_s", "acc1",
                                                           "speedup"], notes, Path(args.out) if args.out else None)
    print(common.markdown_table(records, ["implementation", "seconds", "images_per_s", "acc1", "speedup"]))
    common.log(f"wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()
