"""The dataset zoo: benchmark names → where the data lives, class names and prompt ensembles.

``datasets.toml`` (beside this file) lists every dataset: CLIP_benchmark's names and aliases, the
27 datasets of the CLIP paper and ImageNet's shifts. Class names and templates are data files
(``classnames/``, ``templates/``, ``subsets/``), each citing its source in its header; class
names are in the label order of CLIP_benchmark's sets, several names for one class separated by
``" | "``. Adding a dataset is one TOML table plus its files.

:func:`locate` finds a set on disk (a ``--dataset-root`` folder or URL, which may contain
CLIP_benchmark's ``{dataset}`` / ``{dataset_cleaned}`` placeholders) or in the cache, and
mirrors it from its Hugging Face repo when it is not there (never in the tests).
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

HERE = Path(__file__).resolve().parent
TASKS = ("classification", "multilabel", "retrieval")


@dataclass(frozen=True)
class ZooEntry:
    name: str
    title: str
    task: str = "classification"
    classnames_file: str | None = None
    classes: int | None = None
    templates_ref: str | None = None
    source: str | None = None  # Hugging Face dataset repo in CLIP_benchmark's layout
    aliases: tuple[str, ...] = ()
    paper: bool = False
    metric: str = "acc1"
    base: str | None = None
    subset_file: str | None = None

    @property
    def cleaned(self) -> str:
        """CLIP_benchmark's ``dataset_cleaned`` (``vtab-cifar10``): the repo suffix after ``wds_``."""
        return self.source.split("/wds_", 1)[1] if self.source and "/wds_" in self.source else self.name

    @property
    def cb_name(self) -> str:
        """CLIP_benchmark's dataset name (``vtab/cifar10``, ``cars``)."""
        return self.cleaned.replace("vtab-", "vtab/", 1)

    def classnames(self) -> tuple[str, ...] | None:
        """Class names in label order (alternatives kept as ``"a | b"``), None when the set defines them."""
        return None if self.classnames_file is None else tuple(_data_lines(HERE / "classnames" / f"{self.classnames_file}.txt"))

    def num_classes(self) -> int | None:
        names = self.classnames()
        return len(names) if names is not None else self.classes

    def templates(self) -> tuple[str, ...] | None:
        """The prompt templates (``{}`` or ``{c}`` for the class name), None when the set defines them."""
        if self.templates_ref is None:
            return None
        file = HERE / "templates" / f"{self.templates_ref}.txt"
        if file.is_file():
            return tuple(_data_lines(file))
        from clipforge.zeroshot import load_templates  # a template set shipped with the library

        return tuple(load_templates(self.templates_ref))

    def subset(self) -> tuple[tuple[int, ...], ...] | None:
        """Per class, the labels of ``base`` it corresponds to (ImageNet-A/R: one; ObjectNet: one or more)."""
        if self.subset_file is None:
            return None
        return tuple(tuple(int(v) for v in line.split()) for line in _data_lines(HERE / "subsets" / f"{self.subset_file}.txt"))


def _data_lines(path: Path) -> list[str]:
    """Lines of a zoo data file without its ``#`` header; inner spaces kept as published."""
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]


def _toml():
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    import tomli

    return tomli


@functools.lru_cache(maxsize=1)
def _registry() -> tuple[dict[str, ZooEntry], dict[str, tuple[str, ...]]]:
    data = _toml().loads((HERE / "datasets.toml").read_text(encoding="utf-8"))
    collections = {k: tuple(v) for k, v in data.pop("collections", {}).items()}
    entries = {}
    for name, t in data.items():
        entries[name] = ZooEntry(
            name=name, title=t.get("title", name), task=t.get("task", "classification"),
            classnames_file=t.get("classnames"), classes=t.get("classes"), templates_ref=t.get("templates"),
            source=t.get("source"), aliases=tuple(t.get("aliases", ())), paper=bool(t.get("paper", False)),
            metric=t.get("metric", "acc1"), base=t.get("base"), subset_file=t.get("subset"))
    return entries, collections


def entries() -> dict[str, ZooEntry]:
    return dict(_registry()[0])


def collections() -> dict[str, tuple[str, ...]]:
    return dict(_registry()[1])


def _key(name: str) -> str:
    name = name.strip().lower()
    for prefix in ("wds/", "wds_"):
        name = name[len(prefix):] if name.startswith(prefix) else name
    return name.replace("vtab-", "vtab/").replace("-", "_")


@functools.lru_cache(maxsize=1)
def _lookup() -> dict[str, str]:
    table = {}
    for entry in entries().values():
        for alias in (entry.name, entry.cb_name, entry.cleaned, *entry.aliases):
            table[_key(alias)] = entry.name
    return table


def get(name: str) -> ZooEntry:
    """The entry for a zoo name, one of its aliases or a CLIP_benchmark name (``wds/vtab/cifar10``)."""
    found = _lookup().get(_key(name))
    if found is None:
        names = sorted(set(entries()) | set(collections()))
        close = difflib.get_close_matches(name.strip().lower(), names, n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown dataset {name!r}{hint} (`clipforge datasets` lists them all)")
    return entries()[found]


def expand(names: str | Sequence[str]) -> list[ZooEntry]:
    """Comma lists of names and collections (``paper``, ``imagenet_robustness``, ...) → entries, once each."""
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    out: list[ZooEntry] = []
    for item in items:
        members = collections().get(item.lower(), (item,))
        for member in members:
            entry = get(member)
            if entry not in out:
                out.append(entry)
    if not out:
        raise ValueError("no dataset names given")
    return out


def locate(entry: ZooEntry, root: str | os.PathLike | None = None, splits: Sequence[str] = ("test",),
           download: bool = True, progress: bool = True) -> Path:
    """The local folder holding ``entry``'s set, fetching remote sets into the cache."""
    from clipforge.eval import fetch

    if root is not None:
        text = str(root).format(dataset=entry.cb_name, dataset_cleaned=entry.cleaned.replace("/", "-"))
        if fetch.is_remote(text):
            return fetch.mirror(text, splits, progress=progress)
        return _find_local(entry, Path(text), Path(str(root)))
    if entry.source is None:
        raise FileNotFoundError(f"dataset {entry.name}: no download source (it is not published in "
                                "CLIP_benchmark's layout); pass its folder with --dataset-root")
    source = f"hf://datasets/{entry.source}"
    local = fetch.mirror_dir(source)
    if all((local / s / "nshards.txt").is_file() for s in splits) and not download:
        return local
    if not download:
        raise FileNotFoundError(f"dataset {entry.name}: not in the cache ({local}) and downloads are off; "
                                f"fetch {source} or pass --dataset-root")
    return fetch.mirror(source, splits, progress=progress)


def _find_local(entry: ZooEntry, formatted: Path, given: Path) -> Path:
    """``formatted`` itself when the root had placeholders; else a folder named after the dataset
    under the root (``wds_vtab-cifar10``, ``vtab-cifar10``, ``cifar10``, an alias), else the root
    when it is one set."""
    from clipforge.eval.layout import looks_like_set

    if formatted != given:
        if formatted.is_dir():
            return formatted
        raise FileNotFoundError(f"dataset {entry.name}: {formatted} is not a folder (from --dataset-root {given})")
    names = dict.fromkeys([f"wds_{entry.cleaned}", entry.cleaned, entry.name, entry.cb_name.replace("/", "_"),
                           *(a.replace("/", "_") for a in entry.aliases)])
    candidates = [given / n for n in names]
    for path in candidates:
        if path.is_dir():
            return path
    if given.is_dir() and looks_like_set(given):
        return given
    raise FileNotFoundError(f"dataset {entry.name}: not found under {given} (looked for "
                            f"{', '.join(p.name for p in candidates)}, or the folder itself being one set)")


def listing() -> list[dict]:
    """One row per dataset: name, title, task, class and template counts, download source, paper."""
    rows = []
    for entry in entries().values():
        templates = entry.templates()
        rows.append({"name": entry.name, "title": entry.title, "task": entry.task,
                     "classes": entry.num_classes(), "templates": None if templates is None else len(templates),
                     "source": entry.source, "paper": entry.paper, "metric": entry.metric,
                     "base": entry.base, "aliases": list(entry.aliases)})
    return rows
