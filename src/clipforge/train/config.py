"""Training configuration: typed sections, recipes as TOML/JSON files, checked command-line overrides.

A recipe has one table per section (``[run]``, ``[model]``, ``[tokenizer]``, ``[data]``, ``[loss]``,
``[optim]``, ``[schedule]``, ``[precision]``, ``[checkpoint]``, ``[log]``, ``[eval]``, ``[distributed]``).
``[loss]``'s keys depend on its ``kind``: each loss declares its own (``clipforge.train.losses``). Every key is checked
against the section's dataclass: an unknown key, or a value of the wrong type, is an error naming
the key. Overrides (``optim.lr=1e-3``) are checked the same way. The resolved configuration is saved
as ``train_config.json`` in the run directory; that file is itself a valid recipe.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipforge.config import TextConfig, VisionConfig
from clipforge.data.loader import DataConfig
from clipforge.paths import atomic_write
from clipforge.train import checks
from clipforge.train.distributed import DistributedConfig
from clipforge.train.losses import LossConfig
from clipforge.train.optim import OptimConfig, ScheduleConfig
from clipforge.train.precision import PrecisionConfig


class ConfigError(ValueError):
    """A recipe or override that does not fit the configuration's keys and types."""


@dataclass(frozen=True)
class RunConfig:
    out: str = "runs/train"  # the run directory
    seed: int = 0
    steps: int | None = None  # optimizer steps; None: epochs × steps per epoch
    epochs: int = 1
    accum_steps: int = 1  # micro-batches per step (exact contrastive accumulation)
    global_batch: int | None = None  # instead of accum_steps: accumulate global_batch / (batch_size × processes)
    trim_tokens: bool | None = None  # cut token batches after the longest caption; None: where exact
    device: str = "auto"  # "auto", "cpu" or "cuda"
    distributed: str = "auto"  # "auto" (DDP), "ddp" or "fsdp"
    threads: int | None = None  # torch threads per process; None: torch's default
    processes: int = 1  # data-parallel processes clipforge starts on this machine (clipforge.train.launch)
    max_skipped_steps: int = 10  # consecutive non-finite steps before the run stops
    max_seconds: float | None = None  # a time budget: stop (checkpoint, final model) when it is spent
    crop_scale: tuple[float, float] = (0.9, 1.0)  # random square crop area range (the paper's augmentation)


@dataclass(frozen=True)
class ModelSection:
    name: str = "demo-rn"  # a registered config
    pretrained: str | None = None  # a checkpoint to start from (any format clipforge.load reads)
    embed_dim: int | None = None
    vision: dict[str, Any] = field(default_factory=dict)  # VisionConfig field changes
    text: dict[str, Any] = field(default_factory=dict)  # TextConfig field changes (vocab_size follows the tokenizer)

    def __post_init__(self) -> None:
        for part, cls in (("vision", VisionConfig), ("text", TextConfig)):
            checked = {k: _coerce(v, _field_types(cls)[k], f"model.{part}.{k}")
                       for k, v in _known(cls, getattr(self, part), f"model.{part}").items()}
            object.__setattr__(self, part, checked)


@dataclass(frozen=True)
class TokenizerSection:
    source: str = "openai"  # "openai", a directory written by Tokenizer.save, or "learn"
    vocab_size: int = 2048  # for "learn": the size of the BPE vocabulary learned from the captions
    captions: str | None = None  # for "learn": a text file, one caption a line
    # for "learn": "bpe" (CLIP's byte-level BPE) or "sentencepiece" (SigLIP's: unigram, lowercased, EOS-padded)
    kind: str = "bpe"


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 1000  # steps between checkpoints (0: only the final one)
    keep: int = 3  # most recent checkpoints kept
    resume: str | None = None  # "latest" (this run directory) or a checkpoint directory


@dataclass(frozen=True)
class LogConfig:
    every: int = 10  # steps between progress lines
    tensorboard: bool = True  # also write TensorBoard events when tensorboard is installed


@dataclass(frozen=True)
class EvalSection:
    every: int = 0  # steps between zero-shot evaluations (0: never during training)
    data: str | None = None  # an ImageFolder-style classification set (with classnames.json)
    templates: str = "synthetic"  # a template set name or file
    max_images: int | None = 1000  # evaluate on the first n images (sorted by class) to keep it cheap


@dataclass(frozen=True)
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelSection = field(default_factory=ModelSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=lambda: LossConfig.variant({})())
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalSection = field(default_factory=EvalSection)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def __post_init__(self) -> None:
        found = checks.problems(self)
        if found:
            raise ConfigError("; ".join(found))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return build(cls, data, "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def replace(self, overrides: dict[str, Any]) -> "TrainConfig":
        """A copy with ``{"section.key": value}`` changes (values typed or strings), checked."""
        raw = self.to_dict()
        for key, value in _kinds_first(overrides):
            apply_override(raw, key, value)
        return TrainConfig.from_dict(raw)


# ---- reading recipes ------------------------------------------------------------------------------


def _toml_module():
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:
        import tomli
    except ImportError as err:
        raise ConfigError("TOML recipes need Python >= 3.11 or the 'tomli' package (pip install tomli); "
                          "a JSON recipe works everywhere") from err
    return tomli


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The raw tables of a TOML (.toml) or JSON (.json) recipe."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return _toml_module().loads(text)
    except (ValueError, TypeError) as err:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise ConfigError(f"recipe {path}: not valid {kind}: {err}") from err


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                runlocal: bool = False) -> TrainConfig:
    """The recipe at ``path`` (defaults when None) with ``overrides`` applied, checked.

    ``runlocal``: first lay the packaged ``runlocal.toml`` over it (a few steps on a CPU, small towers)."""
    raw = read_recipe(path) if path is not None else {}
    if runlocal:
        raw = runlocal_recipe(raw)
    for key, value in _kinds_first(overrides or {}):
        apply_override(raw, key, value)
    return TrainConfig.from_dict(raw)


def runlocal_recipe(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with ``train/recipes/runlocal.toml`` laid over it: its tables, then those of the image
    tower's family (``[kind.vit]``, ``[kind.resnet]``); the run directory moves under runs/runlocal/."""
    from importlib import resources

    from clipforge.factory import resolve_config

    local = read_recipe(Path(str(resources.files("clipforge.train.recipes").joinpath("runlocal.toml"))))
    by_kind = local.pop("kind")
    model = raw.get("model", {})
    kind = resolve_config(model.get("name", ModelSection.name), vision=dict(model.get("vision", {}))).vision.kind
    out = _merged(_merged(raw, local), by_kind.get(kind, {}))
    out["run"].pop("accum_steps", None)  # runlocal's global_batch sets the accumulation
    out["run"]["out"] = str(Path("runs") / "runlocal" / Path(raw.get("run", {}).get("out", RunConfig.out)).name)
    return out


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Tables merged key by key (``over`` wins); other values replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _kinds_first(overrides: dict[str, Any]) -> list[tuple[str, Any]]:
    """Overrides with ``*.kind`` first: the other keys of such a section are checked against its kind."""
    return sorted(overrides.items(), key=lambda item: not item[0].endswith(".kind"))


# ---- typed building and checking ------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# Keys that moved, with where they went: a recipe that still uses one gets told.
MOVED = {
    "run.loss": '[loss] kind (e.g. [loss] kind = "siglip"; each loss has its own keys)',
    "model.init_logit_scale": "[loss] init_logit_scale (the loss initialises the temperature it trains)",
}


def _variant(cls: type, data: Any) -> type:
    """A section whose keys depend on one of them (``[loss]`` by its ``kind``): the dataclass for ``data``."""
    if hasattr(cls, "variant") and isinstance(data, dict):
        try:
            return cls.variant(data)
        except ValueError as err:
            raise ConfigError(str(err)) from err
    return cls


def _known(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a table of keys, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            full = f"{where}.{key}" if where else key
            if full in MOVED:
                raise ConfigError(f"config key {full!r} has moved: use {MOVED[full]}")
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {full!r}{hint}; known keys here: {', '.join(names)}")
    return data


def build(cls: type, data: dict[str, Any], where: str) -> Any:
    """An instance of dataclass ``cls`` from a dict, every key and value checked against the fields."""
    cls = _variant(cls, data)
    types_ = _field_types(cls)
    values = {k: _coerce(v, types_[k], f"{where}.{k}" if where else k) for k, v in _known(cls, data, where).items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or 'config'}: {err}") from err


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against (and converted to) type ``tp``; a ConfigError names ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r}: {value!r} is not a {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, _variant(tp, value) if isinstance(value, dict) else tp):
            return value
        return build(tp, value, key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"config key {key!r}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        item = args[0] if args else Any
        items = [_coerce(v, item, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a table, got {value!r}")
        return dict(value)
    return _scalar(value, tp, key)


def _scalar(value: Any, tp: Any, key: str) -> Any:
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        raise ConfigError(f"config key {key!r}: unsupported field type {_type_name(tp)}")
    if not ok:
        raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")
    return float(value) if tp is float else value


# ---- overrides --------------------------------------------------------------------------------------


def _parse_literal(text: str) -> Any:
    """A command-line value as a TOML literal (1e-3, true, [0.9, 1.0], "x"); bare words stay strings."""
    if text.lower() in ("none", "null"):
        return None
    try:
        return _toml_module().loads(f"v = {text}")["v"]
    except ValueError:
        return text


def _field_type_at(path: list[str], raw: dict[str, Any]) -> Any:
    """The declared type of a dotted key, checking every part (dict fields take any sub-key).

    ``raw`` is the recipe being changed: a section whose keys depend on its ``kind`` is checked
    against the dataclass that kind selects there."""
    tp: Any = TrainConfig
    node: Any = raw
    for depth, part in enumerate(path):
        if dataclasses.is_dataclass(tp):
            tp = _variant(tp, node if isinstance(node, dict) else {})
            node = node.get(part, {}) if isinstance(node, dict) else {}
            _known(tp, {part: None}, ".".join(path[:depth]))
            tp = _field_types(tp)[part]
        elif path[:2] == ["model", "vision"] or path[:2] == ["model", "text"]:
            cls = VisionConfig if path[1] == "vision" else TextConfig
            _known(cls, {part: None}, ".".join(path[:depth]))
            tp = _field_types(cls)[part]
        else:
            raise ConfigError(f"config key {'.'.join(path)!r}: {'.'.join(path[:depth])!r} has no sub-keys")
    return tp


def apply_override(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw[section][...][name] = value`` for a dotted ``key``, parsing string values by the key's type."""
    path = key.split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"override {key!r}: expected section.key (e.g. optim.lr)")
    tp = _field_type_at(path, raw)
    if isinstance(value, str):
        literal = _parse_literal(value)
        try:
            value = _coerce(literal, tp, key)
        except ConfigError:
            value = _coerce(value, tp, key)  # a str field given something that parses as a number
    else:
        value = _coerce(value, tp, key)
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a table in the recipe")
    if path[-1] == "kind" and node.get("kind", value) != value:
        _switch_kind(node, path[:-1], value)
    node[path[-1]] = list(value) if isinstance(value, tuple) else value


def _switch_kind(node: dict[str, Any], path: list[str], kind: Any) -> None:
    """A section changes kind: keep the keys the new kind has and the user set (values that differ
    from the old kind's defaults); the rest take the new kind's defaults."""
    tp: Any = TrainConfig
    for part in path:
        tp = _field_types(tp)[part] if dataclasses.is_dataclass(tp) else None
    if tp is None or not hasattr(tp, "variant"):
        return
    old, new = _variant(tp, node), _variant(tp, {**node, "kind": kind})
    defaults = {f.name: f.default for f in dataclasses.fields(old)}
    new_names = {f.name for f in dataclasses.fields(new)}
    for name in list(node):
        if name != "kind" and (name not in new_names or node[name] == defaults.get(name, object())):
            del node[name]


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["optim.lr=1e-3", ...]`` → ``{"optim.lr": "1e-3", ...}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value (e.g. optim.lr=1e-3)")
        out[key.strip()] = value.strip()
    return out
