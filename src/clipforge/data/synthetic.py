"""The synthetic world: procedurally drawn shapes with captions, held-out compositions, eval sets.

The built-in dataset of the demo and the tests. 6 shapes x 8 colours x 2 sizes x 9 positions,
1-3 objects per image (mostly one), low-saturation plain/gradient backgrounds, mild pixel noise,
and captions from :mod:`clipforge.data.captions`. Deterministic: sample i of a split is drawn from
``numpy.random.default_rng([seed, split, i])``, so the output does not depend on ``workers``.

Held-out compositions. k colours and k shapes (k=4 by default) are chosen by seed and paired
cyclically, ``(c_i, s_i)`` and ``(c_i, s_{i+1})``: 2k pairs, every held-out colour and every
held-out shape in exactly two pairs, so recognising a pair needs both attributes. No training or
validation image ever contains a held-out pair (so no caption can describe one).

Layout written by :func:`generate_world` (a stable contract)::

    out/train/{00000..}.tar     key.jpg (or .png), key.txt caption, key.json attributes
    out/train/sizes.json        {"00000.tar": n, ...}
    out/train/captions.txt      every training caption, one per line (BPE vocabulary training)
    out/val/...                 same as train, disjoint samples
    out/eval/<task>/<NN_slug>/<id>.png   ImageFolder-style; sorted folder order = class order
    out/eval/<task>/classnames.json      class names for prompts, e.g. "red circle"
    out/eval/<task>/groups.csv           each image's nuisance attributes (size, background, tone)
    out/eval/heldout*/hierarchy.json     each colour × shape pair's shape (its coarse class)
    out/eval/retrieval/<id>.png + captions.json  {"00000.png": [5 captions], ...}
    out/manifest.json           tasks (path, classnames, folders, templates, shift), held-out
                                pairs, counts, seed, config, timings

Tasks: ``shape`` (6 classes), ``colour`` (8), ``count`` (3), ``heldout`` (the 2k held-out pairs,
single objects), and shifts sharing the label space of ``shape`` and ``heldout``:
``<task>_shift_background`` (striped/checked backgrounds in unseen hues), ``<task>_shift_noise``
(heavy noise), ``<task>_shift_style`` (outlines instead of filled shapes). In-distribution tasks
use single objects (except ``count``) with non-held-out pairs.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from clipforge.data.captions import COUNT_WORDS, describe
from clipforge.data.convert import write_shard, write_sizes
from clipforge.data.render import COLOURS, SHAPES, render
from clipforge.data.world import WorldConfig, allowed_pairs, heldout_pairs, train_scene
from clipforge.data.world_eval import (EVAL_TASKS, eval_jobs, render_eval_chunk, render_retrieval_chunk, task_entries,
                                       write_groups)

__all__ = ["WorldConfig", "generate_world", "heldout_pairs"]

# Split codes mixed into per-sample seeds.
TRAIN, VAL = 0, 1
# The manifest's layout version; a world written with another one is not reused. 2: the colour and
# shape tasks prompt each class with every value of the other attribute (world_eval.task_prompts).
WORLD_FORMAT = 2


def encode(image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, "PNG", compress_level=1)  # level 1: ~3x faster, files ~20% larger
    else:
        image.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _render_shard(job: tuple) -> tuple[str, int, list[str]]:
    """Worker: write one train/val shard; returns (file name, count, captions)."""
    config, split, shard, start, count, out_dir = job
    allowed = allowed_pairs(heldout_pairs(config))
    captions: list[str] = []

    def samples():
        for i in range(start, start + count):
            rng = np.random.default_rng([config.seed, split, i])
            scene = train_scene(rng, config, allowed)
            caption = describe(scene, rng, config.colour_only_captions, config.shape_only_captions)
            captions.append(caption)
            image = render(scene, config.image_size, rng)
            meta = {**scene.to_json(), "caption": caption}
            yield {"__key__": f"{i:09d}", config.image_format: encode(image, config.image_format),
                   "txt": caption, "json": json.dumps(meta)}

    name = f"{shard:05d}.tar"
    n = write_shard(Path(out_dir) / name, samples())
    return name, n, captions


def _run_job(job: tuple):
    kind, payload = job
    if kind == "shard":
        return kind, _render_shard(payload)
    if kind == "eval":
        return kind, render_eval_chunk(payload)
    return kind, render_retrieval_chunk(payload)


def _shard_jobs(config: WorldConfig, out: Path) -> list[tuple]:
    jobs = []
    for split, name, total in ((TRAIN, "train", config.num_train), (VAL, "val", config.num_val)):
        (out / name).mkdir(parents=True, exist_ok=True)
        for shard, start in enumerate(range(0, total, config.shard_size)):
            count = min(config.shard_size, total - start)
            offset = 0 if split == TRAIN else config.num_train  # globally unique keys
            jobs.append(("shard", (config, split, shard, offset + start, count, str(out / name))))
    return jobs


def generate_world(out_dir: str | os.PathLike, config: WorldConfig = WorldConfig(), workers: int = 2) -> dict:
    """Render the world into ``out_dir`` (layout in the module doc); returns the manifest."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    heldout = heldout_pairs(config)
    jobs = _shard_jobs(config, out) + eval_jobs(config, heldout, out / "eval")
    results: dict[str, list] = {"shard": [], "eval": [], "retrieval": []}
    if workers > 1:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers) as pool:
            for kind, res in pool.imap(_run_job, jobs, chunksize=1):
                results[kind].append(res)
    else:
        for kind, res in map(_run_job, jobs):
            results[kind].append(res)
    manifest = _finish(out, config, heldout, results)
    manifest["seconds"] = round(time.perf_counter() - t0, 2)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _finish(out: Path, config: WorldConfig, heldout: list, results: dict) -> dict:
    """Count files, captions, retrieval captions and the manifest (jobs arrive in job order)."""
    splits = {}
    offset = 0
    for name, total in (("train", config.num_train), ("val", config.num_val)):
        n_shards = -(-total // config.shard_size) if total else 0
        shard_results = results["shard"][offset : offset + n_shards]
        offset += n_shards
        write_sizes(out / name, {fname: n for fname, n, _ in shard_results})
        if name == "train":
            with open(out / name / "captions.txt", "w", encoding="utf-8") as f:
                for _, _, caps in shard_results:
                    f.writelines(c + "\n" for c in caps)
        pattern = f"{{00000..{n_shards - 1:05d}}}.tar" if n_shards else ""
        splits[name] = {"shards": f"{name}/{pattern}", "num_samples": total, "num_shards": n_shards}
    captions = {k: v for chunk in results["retrieval"] for k, v in chunk.items()}
    (out / "eval" / "retrieval").mkdir(parents=True, exist_ok=True)
    (out / "eval" / "retrieval" / "captions.json").write_text(json.dumps(captions, indent=1))
    tasks = task_entries(config, heldout, out / "eval")
    write_groups(out / "eval", results["eval"])
    tasks["retrieval"] = {"path": "eval/retrieval", "captions": "eval/retrieval/captions.json",
                          "num_images": len(captions), "captions_per_image": 5}
    return {
        "name": "clipforge synthetic world", "format": WORLD_FORMAT, "seed": config.seed, "config": asdict(config),
        "image_size": config.image_size, "splits": splits, "tasks": tasks,
        "heldout_pairs": [list(p) for p in heldout], "shapes": list(SHAPES), "colours": list(COLOURS),
        "count_words": list(COUNT_WORDS[:3]), "eval_tasks": list(EVAL_TASKS),
        "templates": ["a picture of a {}.", "a photo of a {}.", "a drawing of a {}.", "a {}."],
    }
