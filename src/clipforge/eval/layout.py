"""Finding the evaluation sets under a data root.

- The synthetic world (``manifest.json`` present): every entry of the manifest's ``tasks`` with
  ``classnames`` is a classification task (its ``base``/``shift`` give the shared label spaces and
  its ``templates`` the prompts); an entry with ``captions`` is a retrieval set; ``train/`` is the
  training source for the overlap check.
- Any other folder: the folder itself when it is one ImageFolder-style set or one retrieval set,
  else its subfolders (and those of ``eval/``). A subfolder with ``train/`` and ``test/`` class
  folders is a task with its own splits. A task named ``<base>_<anything>`` with the same class
  names as task ``<base>`` is a shifted version of it. ``train/`` (shards, images or a CSV) is the
  training source when present.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from clipforge.eval.datasets import ClassificationSet, is_classification_dir, load_classification_set


@dataclass(frozen=True)
class TaskSpec:
    name: str
    path: Path
    base: str  # the in-distribution task whose label space this one shares (itself if not shifted)
    shift: str | None = None
    templates: tuple[str, ...] | None = None  # None: the suite's default template set
    split_dirs: tuple[Path, Path] | None = None  # (train, test) when the task ships its own split

    def load(self) -> tuple[ClassificationSet, ClassificationSet | None]:
        """(evaluation set, training set or None). With its own split, the evaluation set is test/."""
        if self.split_dirs is None:
            return load_classification_set(self.path, self.name), None
        train = load_classification_set(self.split_dirs[0], f"{self.name}/train")
        test = load_classification_set(self.split_dirs[1], f"{self.name}/test")
        if train.classnames != test.classnames:
            raise ValueError(f"task {self.name}: train/ and test/ have different classes")
        return test, train


@dataclass(frozen=True)
class DataLayout:
    root: Path
    classification: dict[str, TaskSpec] = field(default_factory=dict)
    retrieval: dict[str, Path] = field(default_factory=dict)
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


def discover(data_root: str | os.PathLike) -> DataLayout:
    root = Path(data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root}: not a directory")
    if (root / "manifest.json").is_file():
        return _from_manifest(root)
    if _is_retrieval_dir(root):
        return DataLayout(root, retrieval={root.name: root})
    if _split_dirs(root) is not None or is_classification_dir(root) and not _has_task_subdirs(root):
        spec = _task(root, root.name)
        return DataLayout(root, classification={spec.name: spec})
    classification, retrieval = {}, {}
    for parent in (root, root / "eval"):
        for sub in sorted(p for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []:
            if sub.name in ("train", "val", "eval") and parent == root:
                continue
            if _is_retrieval_dir(sub):
                retrieval[sub.name] = sub
            elif _split_dirs(sub) is not None or is_classification_dir(sub):
                classification[sub.name] = _task(sub, sub.name)
    if not classification and not retrieval:
        raise FileNotFoundError(f"data root {root}: no classification or retrieval sets found")
    return DataLayout(root, _mark_shifts(classification), retrieval, _train_source(root))


def _from_manifest(root: Path) -> DataLayout:
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    classification, retrieval = {}, {}
    for name, entry in manifest.get("tasks", {}).items():
        path = root / entry.get("path", f"eval/{name}")
        if "captions" in entry:
            retrieval[name] = path
        elif "classnames" in entry:
            templates = tuple(entry["templates"]) if entry.get("templates") else None
            classification[name] = TaskSpec(name, path, entry.get("base", name), entry.get("shift"), templates)
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
    subs = [p for p in root.iterdir() if p.is_dir()]
    return any(_is_retrieval_dir(p) or (p / "classnames.json").is_file() or _split_dirs(p) for p in subs) or (
        root / "eval"
    ).is_dir()


def _is_retrieval_dir(path: Path) -> bool:
    return (path / "captions.json").is_file() or (
        len(list(path.glob("*.csv")) + list(path.glob("*.tsv"))) == 1 and not is_classification_dir(path)
    )


def _mark_shifts(tasks: dict[str, TaskSpec]) -> dict[str, TaskSpec]:
    """A task ``<base>_<suffix>`` with the same class names as ``<base>`` is a shift of it."""
    names = {name: _classnames(spec) for name, spec in tasks.items()}
    out = {}
    for name, spec in tasks.items():
        base = next((b for b in sorted(tasks, key=len, reverse=True) if name.startswith(b + "_") and b != name), None)
        if base is not None and names[base] == names[name] and tasks[base].shift is None:
            spec = TaskSpec(name, spec.path, base, name[len(base) + 1 :], spec.templates, spec.split_dirs)
        out[name] = spec
    return out


def _classnames(spec: TaskSpec) -> tuple[str, ...]:
    return spec.load()[0].classnames


def _train_source(root: Path) -> Path | None:
    """``train/`` (shards or images) or ``train.csv``/``train.tsv`` beside the eval sets."""
    return next((p for p in (root / "train", root / "train.csv", root / "train.tsv") if p.exists()), None)
