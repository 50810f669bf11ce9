"""Evaluation sets of the synthetic world: classification tasks, shifted copies, retrieval.

See :mod:`clipforge.data.synthetic` for the layout. Each task is an ImageFolder-style directory
``eval/<task>/<NN_slug>/<id>.png`` (two-digit class index first, so sorted folders = class order)
with ``classnames.json``. Shifted tasks reuse the class names of their base task.

Beside each task's images, ``groups.csv`` gives every image's nuisance attributes (object size,
background kind and tone: the groups of the bias probe, :mod:`clipforge.eval.analyses.bias`), and
the colour × shape tasks have ``hierarchy.json`` (each pair's shape: the coarse class, so a pair
with the right shape and the wrong colour is a "close" answer, :mod:`clipforge.eval.analyses.coarse_fine`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from clipforge.data.captions import COUNT_WORDS, describe
from clipforge.data.render import COLOURS, SHAPES, render
from clipforge.data.world import allowed_pairs, make_scene, sample_pairs, train_scene

# task -> (base task whose label space it shares, shift or None)
EVAL_TASKS: dict[str, tuple[str, str | None]] = {
    "shape": ("shape", None),
    "colour": ("colour", None),
    "count": ("count", None),
    "heldout": ("heldout", None),
    **{f"{base}_shift_{shift}": (base, shift) for base in ("shape", "heldout")
       for shift in ("background", "noise", "style")},
}
_OBJECT_TEMPLATES = ["a picture of a {}.", "a photo of a {}.", "a drawing of a {}.", "a {}."]
_COUNT_TEMPLATES = ["a picture of {}.", "a photo of {}.", "{}."]
RETRIEVAL_CAPTIONS = 5
_CHUNK = 100  # images per job


def class_names(base: str, heldout: list[tuple[str, str]]) -> list[str]:
    """Human-readable class names, in class-index order, as the captions phrase them."""
    if base == "shape":
        return list(SHAPES)
    if base == "colour":
        return [f"{c} object" for c in COLOURS]
    if base == "count":
        return [f"{w} object" if i == 0 else f"{w} objects" for i, w in enumerate(COUNT_WORDS)]
    return [f"{c} {s}" for c, s in heldout]


def task_prompts(base: str) -> list[str] | dict[str, list[str]]:
    """A task's zero-shot prompts: templates, or {class name: prompts} for colour and shape.

    Every training caption names each object's colour together with its shape, so a prompt that
    names one alone ("a photo of a red object.") ends where no caption does, and measures how the
    text tower extrapolates more than what the model sees. Colour and shape are asked the way the
    captions put them, averaged over the other attribute (prompt ensembling over a nuisance, as
    CLIP's prompts average "a photo of a big {}" and "a photo of a small {}"): "red object" is the
    mean of "a photo of a red circle.", "a photo of a red square.", ..., over every shape.
    """
    if base == "count":
        return _COUNT_TEMPLATES
    if base == "colour":
        return {name: [t.format(f"{c} {s}") for t in _OBJECT_TEMPLATES for s in SHAPES]
                for name, c in zip(class_names("colour", []), COLOURS)}
    if base == "shape":
        return {s: [t.format(f"{c} {s}") for t in _OBJECT_TEMPLATES for c in COLOURS] for s in SHAPES}
    return _OBJECT_TEMPLATES


def folder_names(names: list[str]) -> list[str]:
    return [f"{i:02d}_{n.replace(' ', '_')}" for i, n in enumerate(names)]


def _pairs_for(base: str, cls: int, rng: np.random.Generator, heldout: list, allowed: list) -> list:
    if base == "shape":
        return [_choose(rng, [p for p in allowed if p[1] == SHAPES[cls]])]
    if base == "colour":
        return [_choose(rng, [p for p in allowed if p[0] == list(COLOURS)[cls]])]
    if base == "count":
        return sample_pairs(rng, allowed, cls + 1)
    return [heldout[cls]]


def _choose(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]


def eval_scene(rng: np.random.Generator, task: str, cls: int, config, heldout: list, allowed: list):
    """One image's scene for class ``cls`` of ``task``, with the task's shift applied."""
    base, shift = EVAL_TASKS[task]
    pairs = _pairs_for(base, cls, rng, heldout, allowed)
    noise = config.shift_noise if shift == "noise" else float(rng.uniform(0, config.max_noise))
    return make_scene(rng, pairs, noise=noise, shifted_background=shift == "background",
                      style="outline" if shift == "style" else "filled")


def eval_jobs(config, heldout: list, eval_dir: Path) -> list[tuple]:
    """Jobs for :func:`render_eval_chunk` and :func:`render_retrieval_chunk`, and their folders."""
    jobs = []
    for t, (task, (base, _)) in enumerate(EVAL_TASKS.items()):
        names = class_names(base, heldout)
        for cls, folder in enumerate(folder_names(names)):
            (eval_dir / task / folder).mkdir(parents=True, exist_ok=True)
            for start in range(0, config.eval_per_class, _CHUNK):
                count = min(_CHUNK, config.eval_per_class - start)
                jobs.append(("eval", (config, heldout, t, task, cls, folder, start, count, str(eval_dir))))
    (eval_dir / "retrieval").mkdir(parents=True, exist_ok=True)
    for start in range(0, config.num_retrieval, _CHUNK):
        count = min(_CHUNK, config.num_retrieval - start)
        jobs.append(("retrieval", (config, heldout, start, count, str(eval_dir / "retrieval"))))
    return jobs


def render_eval_chunk(payload: tuple) -> tuple[str, list[list[str]]]:
    """Worker: write ``count`` PNGs of one class of one task; returns (task, groups.csv rows)."""
    config, heldout, t, task, cls, folder, start, count, eval_dir = payload
    heldout = [tuple(p) for p in heldout]
    allowed = allowed_pairs(heldout)
    rows = []
    for i in range(start, start + count):
        rng = np.random.default_rng([config.seed, 100 + t, cls, i])
        scene = eval_scene(rng, task, cls, config, heldout, allowed)
        render(scene, config.image_size, rng).save(Path(eval_dir, task, folder, f"{i:05d}.png"), compress_level=1)
        sizes = {o.size for o in scene.objects}
        rows.append([f"{folder}/{i:05d}.png", sizes.pop() if len(sizes) == 1 else "mixed",
                     scene.background["kind"], scene.background["tone"]])
    return task, rows


GROUP_COLUMNS = ("image", "size", "background", "tone")


def write_groups(eval_dir: Path, chunks: list[tuple[str, list[list[str]]]]) -> None:
    """``<task>/groups.csv`` from the chunks' rows (one header, rows in job order)."""
    by_task: dict[str, list[list[str]]] = {}
    for task, rows in chunks:
        by_task.setdefault(task, []).extend(rows)
    for task, rows in by_task.items():
        with open(eval_dir / task / "groups.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([GROUP_COLUMNS, *rows])


def render_retrieval_chunk(payload: tuple) -> dict[str, list[str]]:
    """Worker: write retrieval images (training distribution); returns {file: captions}."""
    config, heldout, start, count, out_dir = payload
    allowed = allowed_pairs([tuple(p) for p in heldout])
    out = {}
    for i in range(start, start + count):
        rng = np.random.default_rng([config.seed, 50, i])
        scene = train_scene(rng, config, allowed)
        captions: list[str] = []
        for _ in range(20 * RETRIEVAL_CAPTIONS):  # distinct captions of the same scene
            caption = describe(scene, rng)
            if caption not in captions:
                captions.append(caption)
            if len(captions) == RETRIEVAL_CAPTIONS:
                break
        name = f"{i:05d}.png"
        render(scene, config.image_size, rng).save(Path(out_dir, name), compress_level=1)
        out[name] = captions
    return out


def task_entries(config, heldout: list, eval_dir: Path) -> dict:
    """Write each task's classnames.json; the manifest's ``tasks`` entries."""
    tasks = {}
    for task, (base, shift) in EVAL_TASKS.items():
        names = class_names(base, heldout)
        (eval_dir / task / "classnames.json").write_text(json.dumps(names, indent=1))
        if base == "heldout":  # colour × shape pairs: the shape is the coarse class
            (eval_dir / task / "hierarchy.json").write_text(json.dumps({f"{c} {s}": s for c, s in heldout}, indent=1))
        tasks[task] = {
            "path": f"eval/{task}", "classnames": names, "folders": folder_names(names),
            "num_images": len(names) * config.eval_per_class, "base": base, "shift": shift,
            "templates": task_prompts(base),
            "chance": 1.0 / len(names),
        }
    return tasks
