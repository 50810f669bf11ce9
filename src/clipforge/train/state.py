"""Checkpoints: written atomically, the last N kept, the newest complete one found on resume.

Layout of one checkpoint, ``<run>/checkpoints/step_000123/``:

- ``model.safetensors`` + ``config.json`` + the tokenizer's files: ``clipforge.load(dir)`` works on it;
- ``train_state.pt``: everything else needed to continue bitwise-exactly, saved with ``torch.save``
  from tensors and plain containers only, so it loads with ``torch.load(weights_only=True)``:
  optimizer, schedule position, loss scaler, RNG states and data-loader position of every rank,
  step, epoch, and the loss's own parameters (SigLIP's bias).

Atomicity: everything is written into ``.tmp_step_000123`` and fsynced, then the directory is
renamed. A process killed mid-write leaves only a ``.tmp_*`` directory, which is ignored and
removed. A checkpoint damaged later (a truncated file) is skipped on resume with a message.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import save_file

from clipforge.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, read_state_dict
from clipforge.config import ModelConfig

STATE_NAME = "train_state.pt"
STATE_FORMAT = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")
# Test hook, "STEP:SECONDS": pause half-way through writing checkpoint STEP (a test kills the process there).
PAUSE_ENV = "CLIPFORGE_TEST_CHECKPOINT_PAUSE"


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for file in path.iterdir():
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(path)


def write_model_dir(directory: Path, state: dict[str, torch.Tensor], config: ModelConfig, tokenizer: Any) -> None:
    """This project's model format from a state_dict (as ``checkpoint.save_directory`` from a module)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    config.save(directory / CONFIG_NAME)
    if tokenizer is not None:
        tokenizer.save(directory)


def replace_dir(target: Path, write: Callable[[Path], None]) -> Path:
    """Write a directory under a temporary name (``.tmp_<name>``), fsync it, then rename it into place.

    A reader sees the old directory or the new one whole, never a mix; a kill mid-write leaves
    only the ``.tmp_`` directory, which the next write (or :func:`remove_unfinished`) removes.
    """
    tmp, old = target.with_name(f".tmp_{target.name}"), target.with_name(f".old_{target.name}")
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    _fsync_tree(tmp)
    if target.exists():  # written again (a resumed run): the old one goes only once the new one is whole
        os.replace(target, old)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)
    return target


def save_checkpoint(run_dir: str | Path, step: int, write_model: Callable[[Path], None],
                    train_state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` atomically, then delete all but the ``keep`` newest. Returns its path."""
    root = checkpoints_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)

    def write(directory: Path) -> None:
        write_model(directory)
        _test_pause(step)
        torch.save({"format": STATE_FORMAT, **train_state}, directory / STATE_NAME)

    final = replace_dir(root / f"step_{step:06d}", write)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _test_pause(step: int) -> None:
    hook = os.environ.get(PAUSE_ENV)
    if hook:
        at, _, seconds = hook.partition(":")
        if int(at) == step:
            time.sleep(float(seconds))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (unfinished ``.tmp_*`` writes excluded)."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def remove_unfinished(run_dir: str | Path) -> list[Path]:
    """Delete ``.tmp_*`` directories left by a process killed while writing; returns them.

    An ``.old_*`` directory (killed between the two renames of a rewrite) is the complete earlier
    copy: it is put back when the new one never arrived, else deleted.
    """
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    for old in root.glob(".old_step_*"):
        home = old.with_name(old.name.removeprefix(".old_"))
        if home.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, home)
    stale = sorted(root.glob(".tmp_step_*"))
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model state_dict, training state) of one checkpoint; CheckpointError when incomplete or corrupt."""
    path = Path(path)
    if not (path / STATE_NAME).is_file():
        raise CheckpointError(f"{path}: no {STATE_NAME} (not a training checkpoint, or incomplete)")
    model_state = read_state_dict(path)
    try:
        state = torch.load(path / STATE_NAME, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle: torch raises several kinds
        raise CheckpointError(f"{path / STATE_NAME}: truncated or corrupt ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path / STATE_NAME}: not a clipforge training state (format {STATE_FORMAT})")
    return model_state, state


def find_resumable(run_dir: str | Path, log: Callable[[str], None] = print
                   ) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]] | None:
    """The newest checkpoint that reads completely; damaged ones are skipped with a message."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return (path, *read_checkpoint(path))
        except CheckpointError as err:
            log(f"skipping checkpoint {path.name}: it cannot be read completely ({err})")
    return None


class ResumeError(ValueError):
    """A checkpoint that this run cannot continue exactly (e.g. written by another number of ranks)."""


def world_size_mismatch(path: Path, written: int, now: int) -> str:
    """Why a checkpoint of ``written`` ranks cannot continue with ``now``, and what to do instead."""
    return (f"{path} was written by {written} process(es) and this run has {now}. The epoch's data order, "
            f"each rank's data position and random state belong to {written} ranks, so only {written} can "
            f"continue it exactly: resume with {written} process(es) (e.g. torchrun --nproc-per-node {written}), "
            f"or start a new run from its weights and tokenizer: --out NEW_DIR --set model.pretrained={path} "
            f"--set tokenizer.source={path} (optimizer state, schedule and data position then start afresh)")


# ---- random number generator states, as tensors and plain values (weights_only-loadable) -----------


def rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_plain, np_state[2:])],
        "python": _plain(random.getstate()),
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _plain(value: Any) -> Any:
    """numpy scalars and tuples → Python ints/floats and lists."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
