"""Reading and writing checkpoints safely, and inferring OpenAI architectures from their shapes.

Formats read: OpenAI's released files (TorchScript archives and plain state_dicts), open_clip
checkpoints (``{"state_dict": ...}``, ``module.`` prefixes), safetensors files, and this project's
own format: a directory with ``model.safetensors``, ``config.json`` and the tokenizer's files.

Safety: pickled files are read with ``torch.load(weights_only=True)`` only; there is no fallback
to full unpickling. TorchScript archives are read by TorchScript's own loader, which rebuilds
only tensors and TorchScript modules (no arbitrary Python objects); their code is never run.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from clipforge.config import ModelConfig, TextConfig, VisionConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# Extra entries in OpenAI's TorchScript state_dicts that are not parameters.
_JIT_EXTRAS = ("input_resolution", "context_length", "vocab_size")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not describe a CLIP model."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint in OpenAI's key layout, from any supported format."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    elif _is_torchscript(path):
        state = _read_torchscript(path)
    else:
        state = _read_pickle(path)
    return normalize_state_dict(state, source=str(path))


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # TorchScript raises RuntimeError subclasses of many kinds
        raise CheckpointError(f"{path}: not a readable TorchScript archive ({err})") from err
    return dict(module.state_dict())


def _read_pickle(path: Path) -> dict[str, Any]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused: the file holds objects other than tensors and plain containers, and "
            f"clipforge never unpickles those (weights_only=True). Convert it to safetensors in a trusted "
            f"environment. Details: {err}"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state_dict (a dict of tensors), got {type(obj).__name__}")
    return obj


def normalize_state_dict(state: dict[str, Any], source: str = "state_dict") -> dict[str, torch.Tensor]:
    """Unwrap open_clip/trainer containers and strip DDP/compile prefixes."""
    for key in ("state_dict", "model", "module"):
        if key in state and isinstance(state[key], dict) and not torch.is_tensor(state[key]):
            state = state[key]
            break
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        if key in _JIT_EXTRAS:
            continue
        if not torch.is_tensor(value):
            raise CheckpointError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key] = value
    if "text_projection" not in out or not any(k.startswith("visual.") for k in out):
        raise CheckpointError(f"{source}: not a CLIP state_dict (no 'text_projection' or 'visual.*' keys)")
    return out


def infer_config(state: dict[str, torch.Tensor], act: str = "quick_gelu") -> ModelConfig:
    """The architecture of an OpenAI-layout state_dict, read from its shapes (as OpenAI's build_model)."""
    text_width = state["ln_final.weight"].shape[0]
    text = TextConfig(
        context_length=state["positional_embedding"].shape[0],
        vocab_size=state["token_embedding.weight"].shape[0],
        width=text_width,
        layers=_count_blocks(state, "transformer.resblocks."),
        mlp_ratio=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width,
        act=act,
    )
    if "visual.proj" in state:  # ViT
        width, _, patch, _ = state["visual.conv1.weight"].shape
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = VisionConfig(
            image_size=patch * grid,
            layers=_count_blocks(state, "visual.transformer.resblocks."),
            width=width,
            patch_size=patch,
            mlp_ratio=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
            act=act,
        )
    else:  # ModifiedResNet
        layers = tuple(_count_blocks(state, f"visual.layer{i}.") for i in range(1, 5))
        grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = VisionConfig(
            image_size=grid * 32, layers=layers, width=state["visual.layer1.0.conv1.weight"].shape[0],
            patch_size=None, act=act,
        )
    return ModelConfig(embed_dim=state["text_projection"].shape[1], vision=vision, text=text)


def _count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def resize_positional_embedding(state: dict[str, torch.Tensor], image_size: int, patch_size: int | None) -> None:
    """Interpolate the image tower's positional embedding (in place) for another input resolution.

    The class/mean token's embedding is kept; the grid is resized bicubically, as open_clip does.
    """
    key = "visual.positional_embedding" if patch_size else "visual.attnpool.positional_embedding"
    new_grid = image_size // (patch_size or 32)
    old = state[key]  # [1 + G*G, W]
    old_grid = round((old.shape[0] - 1) ** 0.5)
    if old_grid == new_grid:
        return
    grid = old[1:].reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2).float()  # [1, W, G, G]
    grid = torch.nn.functional.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1).to(old.dtype)  # [G'*G', W]
    state[key] = torch.cat([old[:1], grid], dim=0)


def save_directory(model: torch.nn.Module, directory: str | Path, tokenizer: Any = None,
                   metadata: dict[str, str] | None = None) -> Path:
    """Write this project's format: model.safetensors + config.json (+ the tokenizer's files)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", **(metadata or {})})
    model.config.save(directory / CONFIG_NAME)
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


def read_directory_config(directory: Path) -> ModelConfig | None:
    path = directory / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        return ModelConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid model config ({err})") from err
