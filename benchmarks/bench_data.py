"""Data pipeline throughput: images/s per worker through decode + transform + tokenize + collate.

Writes JPEG shards of photo-like images (random sizes in 256-512 px, quality 90), then
1. times each stage in one process (where the time goes), per image;
2. runs the real loader (train transform, draft decoding) with 0, 1, 2 workers: images/s;
3. optionally (--synth N) times the synthetic world generator for N training samples at 64 px.

    .venv/bin/python benchmarks/bench_data.py --images 512 --workers 0,1,2 [--synth 100000]

Prints a table and writes benchmarks/results/data_<date>_<host>.json and .md naming the hardware.
Speed is never asserted here or in tests.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from clipforge.data.convert import write_shard, write_sizes
from clipforge.data.decode import DecodeConfig, decode_caption, decode_image
from clipforge.data.loader import DataConfig, build_loader
from clipforge.data.sources import RawSample, iter_shard, list_shards
from clipforge.transforms import eval_transform, train_transform

WORDS = "a photo of the red small dog cat car tree house street beach city night river old man woman".split()


def photo_like(rng: np.random.Generator) -> Image.Image:
    """A smooth colour field with shapes and sensor noise: compresses and decodes like a photo."""
    w, h = (int(v) for v in rng.integers(256, 513, 2))
    img = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(10, 120))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_photo_shards(folder: Path, n: int, per_shard: int = 128) -> str:
    rng = np.random.default_rng(0)
    sizes = {}
    for s, start in enumerate(range(0, n, per_shard)):
        samples = []
        for i in range(start, min(n, start + per_shard)):
            buf = io.BytesIO()
            photo_like(rng).save(buf, "JPEG", quality=90)
            caption = " ".join(rng.choice(WORDS, int(rng.integers(5, 16))))
            samples.append({"__key__": f"{i:09d}", "jpg": buf.getvalue(), "txt": caption})
        sizes[f"{s:05d}.tar"] = write_shard(folder / f"{s:05d}.tar", samples)
    write_sizes(folder, sizes)
    return str(folder / f"{{00000..{len(sizes) - 1:05d}}}.tar")


def make_tokenizer(vocab: str | None):
    """OpenAI's BPE tokenizer (clipforge's) when a merges file is found, else a hashing stand-in."""
    try:
        from clipforge.tokenizer import Tokenizer, openai_tokenizer

        return (Tokenizer.from_merges(vocab) if vocab else openai_tokenizer()), "clipforge BPE (OpenAI vocab)"
    except Exception:
        def toy(texts):
            out = torch.zeros(len(texts), 77, dtype=torch.long)
            for r, t in enumerate(texts):
                ids = [hash(w) % 49000 + 1 for w in t.split()][:77]
                out[r, : len(ids)] = torch.tensor(ids)
            return out

        return toy, "hashing stand-in (no OpenAI vocab found)"


def time_stages(spec: str, size: int, tokenizer, batch: int) -> dict[str, float]:
    """Milliseconds per image of each stage, one process, no DataLoader."""
    t = {}
    start = time.perf_counter()
    items = [i for ref in list_shards(spec) for i in iter_shard(ref) if isinstance(i, RawSample)]
    t["read tar"] = time.perf_counter() - start
    n = len(items)
    full, draft = DecodeConfig(), DecodeConfig(image_size=size)
    start = time.perf_counter()
    for it in items:
        decode_image(it.files["jpg"], full)
    t["decode (full)"] = time.perf_counter() - start
    start = time.perf_counter()
    images = [decode_image(it.files["jpg"], draft) for it in items]
    t["decode (draft)"] = time.perf_counter() - start
    train, evalt = train_transform(size), eval_transform(size)
    start = time.perf_counter()
    tensors = [train(img, np.random.default_rng(i)) for i, img in enumerate(images)]
    t["train transform"] = time.perf_counter() - start
    start = time.perf_counter()
    for img in images:
        evalt(img)
    t["eval transform"] = time.perf_counter() - start
    captions = [decode_caption(it.files["txt"]) for it in items]
    start = time.perf_counter()
    for i in range(0, n, batch):
        tokenizer(captions[i : i + batch])
    t["tokenize"] = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(0, n, batch):
        torch.stack(tensors[i : i + batch])
    t["collate"] = time.perf_counter() - start
    return {k: 1000 * v / n for k, v in t.items()}


def time_loader(spec: str, size: int, tokenizer, batch: int, workers: int) -> dict[str, float]:
    config = DataConfig(shards=spec, batch_size=batch, workers=workers, decode=DecodeConfig(image_size=size))
    loader = build_loader(config, train_transform(size), tokenizer)
    start = time.perf_counter()
    first, n = None, 0
    for images, _ in loader:
        n += images.shape[0]
        first = first or (time.perf_counter(), n)
    total = time.perf_counter() - start
    steady = (n - first[1]) / max(time.perf_counter() - first[0], 1e-9)
    return {"workers": workers, "images": n, "images_per_s": n / total, "steady_images_per_s": steady,
            "per_worker": steady / max(1, workers)}


def time_synth(n: int, workers: int) -> dict:
    from clipforge.data.synthetic import WorldConfig, generate_world

    with tempfile.TemporaryDirectory() as tmp:
        manifest = generate_world(tmp, WorldConfig(num_train=n), workers=workers)
        eval_images = sum(t.get("num_images", 0) for t in manifest["tasks"].values())
    return {"train_samples": n, "val_samples": 1000, "eval_images": eval_images, "workers": workers,
            "seconds": manifest["seconds"]}


def hardware() -> str:
    cpu = platform.processor() or "cpu"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} usable cores, torch {torch.__version__}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--vocab", help="OpenAI merges file (bpe_simple_vocab_16e6.txt.gz)")
    p.add_argument("--synth", type=int, default=0, help="also time the synthetic world for N samples")
    p.add_argument("--synth-workers", type=int, default=2)
    p.add_argument("--tag", default=platform.node() or "host")
    p.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    tokenizer, tok_name = make_tokenizer(args.vocab)
    result = {"date": datetime.date.today().isoformat(), "hardware": hardware(), "tokenizer": tok_name,
              "images": args.images, "image_size": args.image_size, "batch": args.batch}
    with tempfile.TemporaryDirectory() as tmp:
        spec = write_photo_shards(Path(tmp), args.images)
        result["stages_ms_per_image"] = time_stages(spec, args.image_size, tokenizer, args.batch)
        result["loader"] = [time_loader(spec, args.image_size, tokenizer, args.batch, int(w))
                            for w in args.workers.split(",")]
    if args.synth:
        result["synthetic"] = time_synth(args.synth, args.synth_workers)
    report(result, Path(args.results), args.tag)


def report(result: dict, folder: Path, tag: str) -> None:
    lines = [f"# Data pipeline benchmark, {result['date']}", "", f"Hardware: {result['hardware']}",
             f"Tokenizer: {result['tokenizer']}; {result['images']} JPEGs of 256-512 px -> "
             f"{result['image_size']} px, batch {result['batch']}", "", "| stage | ms/image | images/s (one core) |",
             "|---|---|---|"]
    for stage, ms in result["stages_ms_per_image"].items():
        lines.append(f"| {stage} | {ms:.3f} | {1000 / max(ms, 1e-9):,.0f} |")
    lines += ["", "| loader workers | images/s (epoch) | images/s (steady) | per worker |", "|---|---|---|---|"]
    for r in result["loader"]:
        lines.append(f"| {r['workers']} | {r['images_per_s']:.0f} | {r['steady_images_per_s']:.0f} | {r['per_worker']:.0f} |")
    if "synthetic" in result:
        s = result["synthetic"]
        lines += ["", f"Synthetic world (`generate_world`, default config): {s['train_samples']:,} train + "
                  f"{s['val_samples']:,} val samples at 64 px + {s['eval_images']:,} eval images, "
                  f"{s['workers']} processes: {s['seconds']:.1f} s in all"]
    text = "\n".join(lines) + "\n"
    print(text)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"data_{result['date']}_{tag}"
    (folder / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (folder / f"{stem}.md").write_text(text)


if __name__ == "__main__":
    main()
