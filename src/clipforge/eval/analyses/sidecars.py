"""Files beside a classification set that the analyses read (any supported layout: an ImageFolder
set, CLIP_benchmark's webdataset layout, the synthetic world's tasks).

- ``groups.csv`` or ``groups.json``: per-image group attributes for the bias probe. The CSV has an
  image column (``image``, ``filepath``, ``file``, ... or ``key``: the image's path relative to the
  set, its file name, or its webdataset key) and one column per attribute (``race``, ``age`` ...);
  the JSON is ``{image: {attribute: value}}`` or a list of such rows with an ``image`` field.
- ``bias_labels.json``: the probe's label set: ``{"harmful": {category: [label, ...]}`` (or a plain
  list, one category "harmful"), ``"added": [label, ...]`` (benign labels for the "add a label"
  experiment, e.g. ``["child"]``), ``"groups": [attribute, ...]`` (default: every attribute)}.
- ``hierarchy.json`` (``{class: coarse class}``, every class listed) and/or ``near_misses.json``
  (``{class: [classes counted as close answers]}``): the coarse/fine probe's close answers.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from clipforge.eval.datasets import IMAGE_COLUMNS, ClassificationSet, ShardMember

GROUP_FILES = ("groups.csv", "groups.json")
BIAS_FILE = "bias_labels.json"
HIERARCHY_FILE = "hierarchy.json"
NEAR_MISS_FILE = "near_misses.json"
KEY_COLUMNS = (*IMAGE_COLUMNS, "key", "__key__")


def sidecar(spec: Any, *names: str) -> Path | None:
    """The first of ``names`` beside a task's set (its folder; for a ``train/`` + ``test/`` task its root)."""
    for name in names:
        path = Path(spec.path) / name
        if path.is_file():
            return path
    return None


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def read_groups(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """(attribute names, {image key: {attribute: value}}) from a groups CSV or JSON file."""
    if path.suffix == ".json":
        data = read_json(path)
        rows = list(data.values()) if isinstance(data, dict) else data
        keys = list(data) if isinstance(data, dict) else [_row_key(r, path) for r in data]
    else:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        keys = [_row_key(r, path) for r in rows]
    table = {}
    for key, row in zip(keys, rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: image {key!r}: attributes must be a table of values")
        table[str(key)] = {str(k): "" if v is None else str(v) for k, v in row.items() if k not in KEY_COLUMNS}
    attributes = sorted({a for row in table.values() for a in row})
    if not attributes:
        raise ValueError(f"{path}: no attribute columns besides the image column")
    return attributes, table


def _row_key(row: dict, path: Path) -> str:
    column = next((c for c in KEY_COLUMNS if c in row), None)
    if column is None:
        raise ValueError(f"{path}: no image column (one of {', '.join(KEY_COLUMNS)})")
    return str(row[column])


def image_keys(item: Path | ShardMember, roots: list[Path]) -> list[str]:
    """The names a groups file may use for one image: its path relative to each root, its file name."""
    if isinstance(item, ShardMember):
        return [item.key]
    path, keys = Path(item), []
    for root in roots:
        if path.is_relative_to(root):
            keys.append(path.relative_to(root).as_posix())
    return [*keys, path.name, path.stem]


def align_groups(path: Path, data: ClassificationSet, spec_root: Path) -> dict[str, np.ndarray]:
    """{attribute: values [N] (object array, None where the file has no value)} for ``data``'s images."""
    attributes, table = read_groups(path)
    roots = [Path(data.root), Path(spec_root)]
    rows = [next((table[k] for k in image_keys(item, roots) if k in table), None) for item in data.paths]
    if not any(r is not None for r in rows):
        example = image_keys(data.paths[0], roots)[0] if data.paths else "?"
        raise ValueError(f"{path}: no image of set {data.name} is listed (an image is named like {example!r})")
    return {a: np.array([(r.get(a) or None) if r is not None else None for r in rows], dtype=object)
            for a in attributes}


def read_bias_labels(path: Path, classnames: tuple[str, ...]) -> dict:
    """The probe's label set: {"harmful": {category: [labels]}, "added": [labels], "groups": [...] | None}."""
    spec = read_json(path)
    if not isinstance(spec, dict) or "harmful" not in spec:
        raise ValueError(f"{path}: expected {{\"harmful\": {{category: [labels]}}, \"added\": [...]}}")
    harmful = spec["harmful"]
    harmful = {"harmful": harmful} if isinstance(harmful, list) else harmful
    added = list(spec.get("added", []))
    for where, labels in (*((f"harmful[{c!r}]", v) for c, v in harmful.items()), ("added", added)):
        if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip() for x in labels):
            raise ValueError(f"{path}: {where} must be a list of label names")
    clash = sorted(set(added) & ({x for v in harmful.values() for x in v} | set(classnames)))
    if clash:
        raise ValueError(f"{path}: added labels {clash} are already in the label set")
    groups = spec.get("groups")
    if groups is not None and not (isinstance(groups, list) and all(isinstance(g, str) for g in groups)):
        raise ValueError(f"{path}: groups must be a list of attribute names (columns of the groups file)")
    return {"harmful": {str(c): list(v) for c, v in harmful.items()}, "added": added, "groups": groups}


def read_close_answers(spec: Any, classnames: tuple[str, ...]) -> tuple[list[frozenset[int]], list[str] | None] | None:
    """Per class, the classes counted as close answers, and each class's coarse class (with a
    hierarchy); None when the set has neither file."""
    hierarchy_file, near_file = sidecar(spec, HIERARCHY_FILE), sidecar(spec, NEAR_MISS_FILE)
    if hierarchy_file is None and near_file is None:
        return None
    index = {c: i for i, c in enumerate(classnames)}
    close: list[set[int]] = [set() for _ in classnames]
    parents = None
    if hierarchy_file is not None:
        mapping = read_json(hierarchy_file)
        _check_names(hierarchy_file, mapping, index)
        missing = [c for c in classnames if c not in mapping]
        if missing:
            raise ValueError(f"{hierarchy_file}: classes {missing[:5]} have no coarse class")
        parents = [str(mapping[c]) for c in classnames]
        for i, p in enumerate(parents):
            close[i] |= {j for j, q in enumerate(parents) if q == p and j != i}
    if near_file is not None:
        mapping = read_json(near_file)
        _check_names(near_file, mapping, index)
        for name, others in mapping.items():
            _check_names(near_file, {o: None for o in others}, index)
            close[index[name]] |= {index[o] for o in others if o != name}
    return [frozenset(c) for c in close], parents


def _check_names(path: Path, mapping: Any, index: dict[str, int]) -> None:
    if not isinstance(mapping, dict):
        raise ValueError(f"{path}: expected a JSON object keyed by class name")
    unknown = [k for k in mapping if k not in index]
    if unknown:
        raise ValueError(f"{path}: {unknown[:5]} are not classes of the set ({', '.join(list(index)[:5])}, ...)")
