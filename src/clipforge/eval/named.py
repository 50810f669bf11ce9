"""Datasets by name: zoo entries → a :class:`~clipforge.eval.layout.DataLayout` the suite runs on.

Each name is located (:func:`clipforge.eval.dataset_zoo.locate`), its format detected as for any folder,
and its task given the zoo's class names and prompt ensemble (``prompts="paper"``, the default)
or the set's own files (``prompts="dataset"``, what CLIP_benchmark uses for its webdatasets).

The zoo's class names are matched against the set's own list (``classnames.txt``, or class
folders): the counts must agree; when both hold the same names in another order the zoo's are
reordered to the set's labels; otherwise they are used in label order and the difference is
recorded. Shifted sets (ImageNet-V2/Sketch/A/R, ObjectNet) are marked as shifts of their base
when the base is in the same run, with the label subset they cover, so robustness can score
classifiers trained on the base.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from clipforge.eval import dataset_zoo as zoo
from clipforge.eval.datasets import ClassificationSet
from clipforge.eval.layout import DataLayout, RetrievalSpec, TaskSpec, detect_format

PROMPTS = ("paper", "dataset")


def _norm(name: str) -> str:
    return " ".join(name.split(" | ")[0].replace("_", " ").lower().split())


def align_classnames(ours: tuple[str, ...], theirs: tuple[str, ...] | None, where: str) -> tuple[tuple[str, ...], str | None]:
    """The zoo's names ``ours`` in the label order of a set whose own names are ``theirs``; and a note."""
    if theirs is None:
        return ours, None
    if len(ours) != len(theirs):
        raise ValueError(f"{where}: the set has {len(theirs)} classes but the zoo lists {len(ours)} class names")
    a, b = [_norm(n) for n in ours], [_norm(n) for n in theirs]
    if a == b:
        return ours, None
    if sorted(a) == sorted(b) and len(set(a)) == len(a):
        by_name = dict(zip(a, ours))
        return tuple(by_name[n] for n in b), "the zoo's class names were reordered to the set's label order"
    differ = sum(x != y for x, y in zip(a, b))
    return ours, f"{differ} of {len(ours)} class names differ from the set's own; the zoo's are used in label order"


def prompt_set(classnames: tuple[str, ...], templates: tuple[str, ...]) -> tuple[tuple[str, ...], object]:
    """Display names and what :func:`clipforge.zeroshot.build_classifier` takes: the templates, or
    ``{name: [prompts]}`` when a class has several names (``"happy | smiling"``: all names x all templates)."""
    from clipforge.zeroshot import format_prompt

    display = tuple(n.split(" | ")[0].strip() for n in classnames)
    if all(" | " not in n for n in classnames):
        return display, tuple(templates)
    prompts = {d: [format_prompt(t, alt.strip()) for alt in n.split(" | ") for t in templates]
               for d, n in zip(display, classnames)}
    return display, prompts


def _names_for(entry: zoo.ZooEntry, theirs: tuple[str, ...] | None, prompts: str, where: str,
               notes: dict) -> tuple[str, ...] | None:
    """The class names to use: the zoo's (aligned to the set's labels) or None for the set's own."""
    ours = entry.classnames()
    if ours is None or (prompts == "dataset" and theirs is not None):
        if theirs is not None and entry.classes is not None and len(theirs) != entry.classes:
            raise ValueError(f"{where}: {len(theirs)} class names, the zoo expects {entry.classes} classes")
        return None
    aligned, note = align_classnames(ours, theirs, where)
    if note:
        notes[entry.name] = note
    return prompt_set(aligned, ("{}",))[0]


def _zoo_task(entry: zoo.ZooEntry, spec: TaskSpec, fmt_name: str, prompts: str, notes: dict) -> TaskSpec:
    """``spec`` (as its format found it) with the zoo's class names and templates."""
    from dataclasses import replace

    where = f"dataset {entry.name} ({spec.path})"
    if fmt_name == "clip_benchmark_wds":
        from clipforge.eval import wds
        from clipforge.eval.layout import load_wds_pair

        info = wds.read_info(spec.path)
        names = _names_for(entry, info.classnames, prompts, where, notes)  # checked before any shard is read

        def load() -> tuple[ClassificationSet, ClassificationSet | None]:
            return load_wds_pair(info, entry.name, names)
    else:
        def load() -> tuple[ClassificationSet, ClassificationSet | None]:
            test, train = spec.load()
            names = _names_for(entry, test.classnames, prompts, where, notes)
            if names is None:
                return test, train
            return replace(test, classnames=names), None if train is None else replace(train, classnames=names)

    templates, label = spec.templates, spec.templates_label
    zoo_templates = entry.templates()
    if zoo_templates is not None and (prompts == "paper" or templates is None):
        zoo_names = entry.classnames() if prompts == "paper" else None  # the set's own names take plain templates
        templates = prompt_set(zoo_names, zoo_templates)[1] if zoo_names is not None else zoo_templates
        label = f"{entry.name} ({'the paper' if entry.paper or entry.base else 'the zoo'})"
    return TaskSpec(entry.name, spec.path, entry.name, loader=load, templates=templates, templates_label=label)


def zoo_layout(names: str | Sequence[str], root: str | os.PathLike | None = None, *, splits: Sequence[str] = ("test",),
               prompts: str = "paper", download: bool = True, progress: bool = True) -> tuple[DataLayout, dict]:
    """The layout of named datasets (collections expanded) and notes about their class names."""
    if prompts not in PROMPTS:
        raise ValueError(f"prompts must be one of {PROMPTS}, not {prompts!r}")
    entries = zoo.expand(names)
    classification, retrieval, notes, seen = {}, {}, {}, {}
    for entry in entries:
        path = _locate(entry, root, splits, download, progress)
        if path in seen:
            raise ValueError(f"datasets {seen[path]} and {entry.name} both resolve to {path}; give --dataset-root "
                             "the folder that holds the sets (wds_<name>/ ...), not one set")
        seen[path] = entry.name
        fmt = detect_format(path)
        if fmt is None:
            raise FileNotFoundError(f"dataset {entry.name}: {path} is not a set in any known format")
        tasks, sets = fmt.specs(path, entry.name)
        _check_task(entry, tasks, sets, path)
        for spec in tasks:
            classification[entry.name] = _zoo_task(entry, spec, fmt.name, prompts, notes)
        for spec in sets:
            retrieval[entry.name] = RetrievalSpec(entry.name, spec.path, spec.loader)
    classification = _mark_zoo_shifts(classification)
    label = ",".join(e.name for e in entries)
    return DataLayout(f"datasets {label}" + (f" under {root}" if root else ""), classification, retrieval), notes


def _locate(entry: zoo.ZooEntry, root, splits: Sequence[str], download: bool, progress: bool) -> Path:
    from clipforge.eval.fetch import FetchError

    wanted = ("test",) if entry.task == "retrieval" else tuple(splits)
    try:
        return zoo.locate(entry, root, wanted, download, progress)
    except FetchError:
        if wanted == ("test",):
            raise
        return zoo.locate(entry, root, ("test",), download, progress)  # a set without a train split


def _check_task(entry: zoo.ZooEntry, tasks: list, sets: list, path: Path) -> None:
    kind = "retrieval" if sets else "classification"
    if (entry.task == "retrieval") != (kind == "retrieval"):
        raise ValueError(f"dataset {entry.name}: {path} holds a {kind} set, the zoo expects {entry.task}")


def _mark_zoo_shifts(tasks: dict[str, TaskSpec]) -> dict[str, TaskSpec]:
    from dataclasses import replace

    out = {}
    for name, spec in tasks.items():
        entry = zoo.get(name)
        if entry.base is not None and entry.base in tasks:
            spec = replace(spec, base=entry.base, shift=name, subset=entry.subset())
        out[name] = spec
    return out
