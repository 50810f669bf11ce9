"""Finding the evaluation sets under a data root.

- The synthetic world (``manifest.json`` present): every entry of the manifest's ``tasks`` with
  ``classnames`` is a classification task (its ``base``/``shift`` give the shared label spaces and
  its ``templates`` the prompts); an entry with ``captions`` is a retrieval set; ``train/`` is the
  training source for the overlap check.
- Any other folder: the folder itself when it is one set, else its subfolders (and those of
  ``eval/``). What a set is comes from :data:`FORMATS`, tried in order:
  CLIP_benchmark's webdataset layout (:mod:`clipforge.eval.wds`), a retrieval folder
  (``captions.json`` or one CSV), an ImageFolder-style classification folder (a subfolder with
  ``train/`` and ``test/`` class folders is a task with its own splits). Adding a format is one
  :class:`SetFormat` in that list.
  A task named ``<base>_<anything>`` with the same class names as task ``<base>`` is a shifted
  version of it. ``train/`` (shards, images or a CSV) is the training source when present.

Named datasets (``--dataset cifar10,...``) build their layout in :mod:`clipforge.eval.named`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from clipforge.eval.datasets import (
    ClassificationSet,
    RetrievalSet,
    is_classification_dir,
    load_classification_set,
    load_retrieval_set,
)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    path: Path
    base: str  # the in-distribution task whose label space this one shares (itself if not shifted)
    shift: str | None = None
    templates: Any = None  # tuple of templates, or {class name: [prompts]}; None: the suite's default
    split_dirs: tuple[Path, Path] | None = None  # (train, test) when the task ships its own split
    loader: Callable[[], tuple[ClassificationSet, ClassificationSet | None]] | None = None  # other formats
    subset: tuple[tuple[int, ...], ...] | None = None  # per class, the labels of ``base`` it stands for
    templates_label: str | None = None  # how the report names the templates

    def load(self) -> tuple[ClassificationSet, ClassificationSet | None]:
        """(evaluation set, training set or None). With its own split, the evaluation set is test/."""
        if self.loader is not None:
            return self.loader()
        if self.split_dirs is None:
            return load_classification_set(self.path, self.name), None
        train = load_classification_set(self.split_dirs[0], f"{self.name}/train")
        test = load_classification_set(self.split_dirs[1], f"{self.name}/test")
        if train.classnames != test.classnames:
            raise ValueError(f"task {self.name}: train/ and test/ have different classes")
        return test, train


@dataclass(frozen=True)
class RetrievalSpec:
    name: str
    path: Path
    loader: Callable[[], RetrievalSet] | None = None

    def load(self) -> RetrievalSet:
        return self.loader() if self.loader is not None else load_retrieval_set(self.path, self.name)


@dataclass(frozen=True)
class DataLayout:
    root: Path | str
    classification: dict[str, TaskSpec] = field(default_factory=dict)
    retrieval: dict[str, RetrievalSpec] = field(default_factory=dict)
    train_source: Path | None = None
    synthetic: bool = False

    def shift_groups(self) -> dict[str, list[str]]:
        """{in-distribution task: [shifted tasks]} for tasks that have shifted versions."""
        groups: dict[str, list[str]] = {}
        for spec in self.classification.values():
            if spec.shift is not None and spec.base in self.classification:
                groups.setdefault(spec.base, []).append(spec.name)
        return groups

    def base_tasks(self) -> list[str]:
        return [name for name, spec in self.classification.items() if spec.shift is None]


@dataclass(frozen=True)
class SetFormat:
    """One on-disk format: ``detect(path, alone)`` (``alone``: the data root itself, not a
    subfolder of a collection) and ``specs(path, name)`` → its classification tasks and retrieval sets."""

    name: str
    detect: Callable[[Path, bool], bool]
    specs: Callable[[Path, str], tuple[list[TaskSpec], list[RetrievalSpec]]]


def _wds_specs(path: Path, name: str) -> tuple[list[TaskSpec], list[RetrievalSpec]]:
    from clipforge.eval import wds

    info = wds.read_info(path)
    if info.kind == "retrieval":
        split = wds_eval_split(info)
        return [], [RetrievalSpec(name, path, lambda: wds.load_retrieval(path, split, name, info))]
    return [TaskSpec(name, path, name, loader=lambda: load_wds_pair(info, name), templates=info.templates,
                     templates_label=f"{name} (zeroshot_classification_templates.txt)" if info.templates else None)], []


def wds_eval_split(info) -> str:
    """``test`` when the set has it (CLIP_benchmark's default split), else its only split."""
    if "test" in info.splits or len(info.splits) != 1:
        return "test"
    return info.splits[0]


def load_wds_pair(info, name: str, classnames: tuple[str, ...] | None = None):
    """(test split, train split or None) of a classification set in CLIP_benchmark's layout."""
    from clipforge.eval import wds

    split = wds_eval_split(info)
    test = wds.load_classification(info.root, split, name, classnames, info)
    train = None
    if "train" in info.splits and split != "train":
        train = wds.load_classification(info.root, "train", f"{name}/train", classnames, info)
    return test, train


def shard_layout(test: str, train: str | None = None, classnames: str | None = None) -> DataLayout:
    """One classification task from shard specs (``val/{000000..000049}.tar``, ``key.jpg`` + ``key.cls``):
    class names from ``classnames`` or ``classnames.txt`` beside the shards, and its templates file
    when there is one; ``train`` (a spec) gives the probes their training split."""
    from clipforge.data.class_captions import TEMPLATES_FILE, find_classnames_file
    from clipforge.data.sources import expand_urls
    from clipforge.eval import wds

    test_urls, train_urls = expand_urls(test), expand_urls(train) if train else None
    names_file = Path(classnames) if classnames else find_classnames_file(test_urls)
    if names_file is None or not names_file.is_file():
        raise FileNotFoundError(f"{classnames or test}: no class names; pass --classnames FILE or put classnames.txt "
                                "beside the shards (one class a line, in label order)")
    names = tuple(n.split(" | ")[0].strip() for n in names_file.read_text(encoding="utf-8").splitlines()
                  if n.strip() and not n.startswith("#"))
    folder = Path(test_urls[0]).parent
    name = folder.parent.name if folder.name in ("test", "val", "validation", "train") else folder.name

    def load():
        eval_set = wds.load_shards(test_urls, name, names, str(names_file))
        train_set = wds.load_shards(train_urls, f"{name}/train", names, str(names_file)) if train_urls else None
        return eval_set, train_set

    templates_file = names_file.parent / TEMPLATES_FILE
    templates = tuple(t.strip() for t in templates_file.read_text(encoding="utf-8").splitlines() if t.strip()) \
        if templates_file.is_file() else None
    spec = TaskSpec(name, folder, name, loader=load, templates=templates,
                    templates_label=f"{name} ({TEMPLATES_FILE})" if templates else None)
    return DataLayout(test, {name: spec})


def _is_wds(path: Path, alone: bool) -> bool:
    from clipforge.eval.wds import is_wds_root

    return is_wds_root(path)


def _is_retrieval(path: Path, alone: bool) -> bool:
    return (path / "captions.json").is_file() or (
        len(list(path.glob("*.csv")) + list(path.glob("*.tsv"))) == 1 and not is_classification_dir(path)
    )


def _is_folder_task(path: Path, alone: bool) -> bool:
    return _split_dirs(path) is not None or is_classification_dir(path) and not (alone and _has_task_subdirs(path))


FORMATS: list[SetFormat] = [
    SetFormat("clip_benchmark_wds", _is_wds, _wds_specs),
    SetFormat("retrieval", _is_retrieval, lambda path, name: ([], [RetrievalSpec(name, path)])),
    SetFormat("imagefolder", _is_folder_task, lambda path, name: ([_task(path, name)], [])),
]


def detect_format(path: Path, alone: bool = True) -> SetFormat | None:
    return next((f for f in FORMATS if path.is_dir() and f.detect(path, alone)), None)


def looks_like_set(path: Path) -> bool:
    """True when ``path`` is one evaluation set in any known format."""
    return detect_format(path) is not None


def discover(data_root: str | os.PathLike) -> DataLayout:
    root = Path(data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root}: not a directory")
    if (root / "manifest.json").is_file():
        return _from_manifest(root)
    fmt = detect_format(root, alone=True)
    if fmt is not None:
        tasks, retrieval = fmt.specs(root, root.name)
        return DataLayout(root, {t.name: t for t in tasks}, {r.name: r for r in retrieval})
    classification, retrieval = {}, {}
    for parent in (root, root / "eval"):
        for sub in sorted(p for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []:
            if sub.name in ("train", "val", "eval") and parent == root:
                continue
            fmt = detect_format(sub, alone=False)
            if fmt is not None:
                tasks, sets = fmt.specs(sub, sub.name)
                classification.update({t.name: t for t in tasks})
                retrieval.update({r.name: r for r in sets})
    if not classification and not retrieval:
        raise FileNotFoundError(f"data root {root}: no classification or retrieval sets found (formats: "
                                f"{', '.join(f.name for f in FORMATS)})")
    return DataLayout(root, _mark_shifts(classification), retrieval, _train_source(root))


def _from_manifest(root: Path) -> DataLayout:
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    classification, retrieval = {}, {}
    for name, entry in manifest.get("tasks", {}).items():
        path = root / entry.get("path", f"eval/{name}")
        if "captions" in entry:
            retrieval[name] = RetrievalSpec(name, path)
        elif "classnames" in entry:
            templates = entry.get("templates") or None  # a list, or {class name: [prompts]}
            if isinstance(templates, list):
                templates = tuple(templates)
            classification[name] = TaskSpec(name, path, entry.get("base", name), entry.get("shift"), templates,
                                            templates_label=f"{name} (manifest)" if templates else None)
    return DataLayout(root, classification, retrieval, _train_source(root), synthetic=True)


def _task(path: Path, name: str) -> TaskSpec:
    return TaskSpec(name, path, name, None, None, _split_dirs(path))


def _split_dirs(path: Path) -> tuple[Path, Path] | None:
    train, test = path / "train", path / "test"
    if is_classification_dir(train) and is_classification_dir(test):
        return train, test
    return None


def _has_task_subdirs(root: Path) -> bool:
    """True when subfolders are themselves sets (a collection), not class folders."""
    from clipforge.eval.wds import is_wds_root

    subs = [p for p in root.iterdir() if p.is_dir()]
    return any(_is_retrieval(p, False) or (p / "classnames.json").is_file() or _split_dirs(p) or is_wds_root(p)
               for p in subs) or (root / "eval").is_dir()


def _mark_shifts(tasks: dict[str, TaskSpec]) -> dict[str, TaskSpec]:
    """A task ``<base>_<suffix>`` with the same class names as ``<base>`` is a shift of it."""
    candidates = {n for n in tasks if any(n.startswith(b + "_") and b != n for b in tasks)}
    names = {name: tasks[name].load()[0].classnames for name in tasks
             if name in candidates or any(c.startswith(name + "_") for c in candidates)}
    out = {}
    for name, spec in tasks.items():
        base = next((b for b in sorted(tasks, key=len, reverse=True) if name.startswith(b + "_") and b != name), None)
        if base is not None and names[base] == names[name] and tasks[base].shift is None:
            spec = replace(spec, base=base, shift=name[len(base) + 1 :])
        out[name] = spec
    return out


def _train_source(root: Path) -> Path | None:
    """``train/`` (shards or images) or ``train.csv``/``train.tsv`` beside the eval sets."""
    return next((p for p in (root / "train", root / "train.csv", root / "train.tsv") if p.exists()), None)
