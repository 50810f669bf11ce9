"""Reading and writing checkpoints safely, and inferring OpenAI architectures from their shapes.

Formats read: OpenAI's released files (TorchScript archives and plain state_dicts), open_clip
checkpoints (``{"state_dict": ...}``, ``module.`` prefixes, and open_clip's Hub directories),
safetensors files, HF transformers' ``CLIPModel``, ``SiglipModel`` and ``Siglip2Model`` (a
``save_pretrained`` directory or its state_dict), and this project's own format: a directory with
``model.safetensors``, ``config.json`` and the tokenizer's files. Directories are told apart by
``clipforge.layouts``.

Safety: nothing in a checkpoint is ever executed.
- Pickles are read with ``torch.load(weights_only=True)`` only; there is no fallback to full unpickling.
- TorchScript archives are not opened with ``torch.jit.load`` (which compiles the archive's code and
  runs its ``__setstate__`` methods): their ``data.pkl`` is read by a restricted unpickler that rebuilds
  tensors and inert stand-ins for modules, and refuses every other global (see ``_ArchiveUnpickler``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import pickle
import re
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from clipforge import families, layouts
from clipforge.config import ModelConfig, PreprocessConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = layouts.CONFIG_NAME
# Extra entries in OpenAI's TorchScript state_dicts that are not parameters.
_JIT_EXTRAS = ("input_resolution", "context_length", "vocab_size")
# The causal attention mask, a constant some writers keep as a buffer (torch <= 1.5 TorchScript archives of
# OpenAI-style code, where every tensor attribute was one); the towers build it themselves.
_DERIVED = "attn_mask"
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not describe a CLIP model."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint (file or directory, any supported format) in OpenAI's key layout."""
    path = Path(path)
    if path.is_dir():
        state, source = _read_directory_weights(path)
    elif path.is_file():
        state, source = read_file(path), path
    else:
        raise CheckpointError(f"{path}: no such checkpoint file or directory")
    return normalize_state_dict(state, source=str(source))


def read_file(path: Path) -> dict[str, Any]:
    """The raw contents of one checkpoint file; the format is recognised from the bytes, not the name."""
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file, truncated or corrupt ({err})") from err
    if zipfile.is_zipfile(path) and _is_torchscript(path):
        return read_torchscript(path)
    return _read_pickle(path)


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= struct.unpack("<Q", head[:8])[0] <= path.stat().st_size - 8


def _read_directory_weights(directory: Path) -> tuple[dict[str, Any], Path]:
    layout = layouts.of(directory)
    path = layouts.weights_file(directory, layout)
    if path is None:
        raise CheckpointError(f"{directory}: no {', '.join(layout.weights)} in this directory ({layout.name} layout)")
    if path.name.endswith(".index.json"):  # HF sharded safetensors: {"weight_map": {key: shard file}}
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        state: dict[str, Any] = {}
        for shard in shards:
            state.update(read_file(directory / shard))
        return state, path
    return read_file(path), path


def _read_pickle(path: Path) -> dict[str, Any]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"(?i)unsupported global[^\n]*|GLOBAL [\w.]+[^\n]*", str(err))
        if refused:
            raise CheckpointError(
                f"{path}: refused: the file holds Python objects other than tensors and plain containers "
                f"({refused.group(0).strip()}); clipforge never unpickles those (weights_only=True). "
                "Convert it to safetensors in a trusted environment."
            ) from err
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, corrupt or another kind of file") from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state_dict (a dict of tensors), got {type(obj).__name__}")
    return obj


# ---- TorchScript archives (OpenAI's released .pt files), read without running their code ----------

def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in archive.namelist())
    except zipfile.BadZipFile:
        return False


class _ScriptObject:
    """Inert stand-in for a TorchScript object: keeps its pickled attributes, has none of its code."""

    qualname = ""
    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *_ignored) -> torch.Tensor:
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _identity(value):
    return value


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl``; the only globals it resolves are tensor rebuilding,
    storage types, ``OrderedDict``, TorchScript's list helpers and ``__torch__.*`` classes (as inert
    ``_ScriptObject`` subclasses). Anything else is refused before it can be called."""

    _SAFE = {("collections", "OrderedDict"): collections.OrderedDict, ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor}
    _SAFE.update({("torch.jit._pickle", n): _identity for n in ("build_intlist", "build_doublelist", "build_boollist",
                                                                "build_tensorlist")})

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        import io

        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix
        self.classes: dict[str, type] = {}
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            return self.classes.setdefault(qualname, type(name, (_ScriptObject,), {"qualname": qualname}))
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) in self._SAFE:
            return self._SAFE[(module, name)]
        raise pickle.UnpicklingError(f"refused global {module}.{name}")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
        if key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) != numel * itemsize:
                raise pickle.UnpicklingError(f"storage {key}: {len(raw)} bytes, expected {numel * itemsize}")
            self.storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self.storages[key]


def read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    """The state_dict of a TorchScript archive (``torch.jit.load(path).state_dict()``), code not run."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            data_pkl = next(n for n in names if n == "data.pkl" or n.endswith("/data.pkl"))
            prefix = data_pkl[: -len("data.pkl")]
            if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() != b"little":
                raise CheckpointError(f"{path}: big-endian TorchScript archives are not supported")
            declared = _declared_state_names(archive, prefix)
            root = _ArchiveUnpickler(archive.read(data_pkl), archive, prefix).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, StopIteration, KeyError, zipfile.BadZipFile, EOFError, ValueError, TypeError,
            AttributeError, IndexError, RuntimeError) as err:
        raise CheckpointError(f"{path}: refused or unreadable TorchScript archive ({type(err).__name__}: {err})") from err
    if not isinstance(root, _ScriptObject):
        raise CheckpointError(f"{path}: the TorchScript archive does not hold a module")
    state: dict[str, torch.Tensor] = {}
    _collect_tensors(root, "", declared, state)
    return state


def _declared_state_names(archive: zipfile.ZipFile, prefix: str) -> dict[str, set[str]]:
    """Parameter and buffer names per class, read (as text, never run) from the archive's code files.

    A class is listed only when its code declares its buffers (``__buffers__``, written since torch
    1.6). Archives of torch <= 1.5 have no such line: there every tensor attribute that is not a
    parameter was a buffer (BatchNorm statistics, masks), so those classes keep all their tensors.
    """
    declared: dict[str, set[str]] = {}
    for name in archive.namelist():
        if not (name.startswith(f"{prefix}code/") and name.endswith(".py")):
            continue
        module = name[len(f"{prefix}code/"): -len(".py")].replace("/", ".")
        source = archive.read(name).decode("utf-8", errors="replace")
        for match in re.finditer(r"^class (\w+)\(Module\):\n((?:[ \t]+.*\n|\n)*)", source, flags=re.M):
            body = match[2]
            if not re.search(r"^\s+__buffers__ = \[", body, flags=re.M):
                continue
            lists = re.findall(r"^\s+__(?:parameters|buffers)__ = \[(.*?)\]", body, flags=re.M | re.S)
            declared[f"{module}.{match[1]}"] = {n for part in lists for n in re.findall(r'"(\w+)"', part)}
    return declared


def _collect_tensors(obj: _ScriptObject, prefix: str, declared: dict[str, set[str]], out: dict) -> None:
    if not isinstance(obj.state, dict):
        return
    names = declared.get(obj.qualname)  # None: no declaration found, keep every tensor attribute
    for name, value in obj.state.items():
        if isinstance(value, _ScriptObject):
            _collect_tensors(value, f"{prefix}{name}.", declared, out)
        elif torch.is_tensor(value) and (names is None or name in names):
            out[f"{prefix}{name}"] = value


# ---- state_dict normalisation and architecture inference ------------------------------------------

def normalize_state_dict(state: dict[str, Any], source: str = "state_dict") -> dict[str, torch.Tensor]:
    """Unwrap open_clip/trainer containers, strip DDP/compile prefixes, map HF keys to OpenAI's."""
    for key in ("state_dict", "model", "module"):
        if key in state and isinstance(state[key], dict) and not torch.is_tensor(state[key]):
            state = state[key]
            break
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        if key in _JIT_EXTRAS or key.rsplit(".", 1)[-1] == _DERIVED:
            continue
        if not torch.is_tensor(value):
            raise CheckpointError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key] = value
    from clipforge import hf  # the key mapping only: no transformers import

    if hf.is_hf_state_dict(out):
        try:
            out = hf.state_from_hf(out)
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"{source}: not an HF CLIP/SigLIP state_dict we can map ({err})") from err
    if not any(k.startswith("visual.") for k in out) or all(k.startswith("visual.") or k == "logit_scale" for k in out):
        raise CheckpointError(f"{source}: not a CLIP state_dict (it needs image tower 'visual.*' keys and text tower keys)")
    return out


def infer_config(state: dict[str, torch.Tensor], act: str = "quick_gelu", source: str = "state_dict") -> ModelConfig:
    """The architecture of an OpenAI-layout state_dict, read from its shapes (as OpenAI's build_model)."""
    try:
        return _infer_config(state, act)
    except (KeyError, IndexError, ValueError) as err:
        raise CheckpointError(f"{source}: cannot infer the architecture from its shapes ({type(err).__name__}: {err})") from err


def _infer_config(state: dict[str, torch.Tensor], act: str) -> ModelConfig:
    text_family = families.infer_text(state)
    vision = families.infer_vision(state, act)
    preprocess = families.of(vision).preprocess or PreprocessConfig()
    bias = float(state["logit_bias"]) if "logit_bias" in state else None
    config = ModelConfig(embed_dim=text_family.embed_dim(state), vision=vision, text=text_family.infer_config(state, act),
                         preprocess=preprocess, init_logit_bias=bias)
    return _registered_heads(config)


def _registered_heads(config: ModelConfig) -> ModelConfig:
    """Shapes do not tell head counts; the family's rule (OpenAI's 64-wide heads) does not hold for
    open_clip's ViT-H/g/bigG (80, 88, 104 wide). When the registered architectures of these shapes
    agree on their heads, those are used."""
    from clipforge.registry import available_models, get_config

    heads = {(c.vision.heads, c.text.heads) for c in map(get_config, available_models())
             if _same_shapes(c.vision, config.vision) and _same_shapes(c.text, config.text) and c.embed_dim == config.embed_dim}
    if len(heads) != 1:
        return config
    (vision_heads, text_heads), = heads
    return config.replace(vision={"heads": vision_heads}, text={"heads": text_heads})


def _same_shapes(a: Any, b: Any) -> bool:
    """Equal tower configs but for heads and activation (floats such as MLP ratios to 1e-3: read back
    from shapes, 4.3637 is 6144 / 1408)."""
    if type(a) is not type(b):
        return False
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name in ("heads", "act") or x == y or (isinstance(x, float) and isinstance(y, float) and math.isclose(x, y, rel_tol=1e-3)):
            continue
        return False
    return True


def resize_positional_embedding(state: dict[str, torch.Tensor], config: ModelConfig, image_size: int) -> ModelConfig:
    """Interpolate the image tower's positional embedding (in place) for another input resolution.

    The family of the image tower knows its key and layout (class/mean token kept, the grid resized
    bicubically, as open_clip does); returns the config at the new resolution.
    """
    vision = families.of(config.vision).resize_positions(state, config.vision, image_size)
    return config.replace(vision=vision)


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "state_dict") -> None:
    """``model.load_state_dict(state, strict=True)``; when they do not fit, the error names the missing
    keys, the unexpected ones and the shapes that differ (the first few of each, with counts)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {list(state[k].shape)} (the model's: {list(v.shape)})" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    problems = [f"{len(items)} {what}: {_first(items)}" for what, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shapes differ", shapes)) if items]
    if problems:
        config = getattr(model, "config", None)
        towers = (f" ({families.of(config.vision).describe(config.vision)}, {families.of(config.text).describe(config.text)})"
                  if isinstance(config, ModelConfig) else "")
        raise CheckpointError(f"{source}: weights do not fit the architecture{towers}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def _first(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


# ---- writing ---------------------------------------------------------------------------------------

def save_state_dict(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write tensors as safetensors, atomically (a temporary file in the same directory, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt", **(metadata or {})})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_directory(model: torch.nn.Module, directory: str | Path, tokenizer: Any = None,
                   metadata: dict[str, str] | None = None) -> Path:
    """Write this project's format: model.safetensors + config.json (+ the tokenizer's files)."""
    directory = Path(directory)
    save_state_dict(model.state_dict(), directory / WEIGHTS_NAME, metadata)
    model.config.save(directory / CONFIG_NAME)
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


def read_directory_config(directory: Path) -> ModelConfig | None:
    """The architecture a checkpoint directory declares (``clipforge.layouts``); None when it has none."""
    layout = layouts.of(directory)
    try:
        return layout.read_config(directory)
    except (json.JSONDecodeError, TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{directory / layout.config_file}: invalid model config ({err})") from err
