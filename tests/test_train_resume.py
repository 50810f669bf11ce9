"""Exact resume: stopped mid-epoch and resumed in a new process, a CPU run is bitwise the same.

Also: a run killed with SIGKILL while writing a checkpoint resumes from the last complete one, and
a truncated checkpoint is skipped with a message naming it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipforge.train.config import load_config
from clipforge.train.logging import read_metrics
from clipforge.train.loop import Trainer
from clipforge.train.state import PAUSE_ENV, list_checkpoints, read_checkpoint

STEPS = 12


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from clipforge.data.synthetic import WorldConfig, generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, WorldConfig(num_train=192, num_val=0, shard_size=48, eval_per_class=1, num_retrieval=4),
                   workers=1)
    return out


@pytest.fixture(autouse=True)
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def _recipe(world: Path, tmp: Path, workers: int, checkpoint_every: int = 0) -> Path:
    recipe = {
        "run": {"steps": STEPS, "seed": 3, "threads": 1},
        "model": {"name": "tiny-rn", "text": {"context_length": 24}},
        "tokenizer": {"source": "learn", "vocab_size": 600, "captions": str(world / "train" / "captions.txt")},
        "data": {"shards": str(world / "train" / "{00000..00003}.tar"), "batch_size": 8, "workers": workers},
        "optim": {"lr": 2e-3},
        "schedule": {"warmup_steps": 3},
        "checkpoint": {"every": checkpoint_every, "keep": 5},
        "log": {"every": 100, "tensorboard": False},
    }
    path = tmp / f"recipe_w{workers}_c{checkpoint_every}.json"
    path.write_text(json.dumps(recipe))
    return path


def _train_in_process(recipe: Path, out: Path, stop_at: int | None = None) -> None:
    config = load_config(recipe, {"run.out": str(out)})
    Trainer(config, echo=lambda message: None).train(stop_at=stop_at)


def _resume_in_new_process(recipe: Path, out: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "clipforge", "train", "--config", str(recipe), "--out", str(out), "--resume", "latest"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def _losses(run: Path) -> list[str]:
    return [r["loss_hex"] for r in read_metrics(run)]


def _assert_bitwise_equal_weights(a: Path, b: Path) -> None:
    left, right = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert left.keys() == right.keys()
    different = [k for k in left if not torch.equal(left[k], right[k])]
    assert not different, f"weights differ: {different[:5]}"


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory) -> Path:
    """The uninterrupted run (data workers 0)."""
    tmp = tmp_path_factory.mktemp("reference")
    _train_in_process(_recipe(world, tmp, workers=0), tmp / "run")
    return tmp / "run"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_stop_mid_epoch_and_resume_in_new_process_is_bitwise_exact(world, reference, tmp_path, workers):
    recipe = _recipe(world, tmp_path, workers)
    if workers == 0:
        full = reference
    else:
        full = tmp_path / "full"
        _train_in_process(recipe, full)
    stopped = tmp_path / "stopped"
    _train_in_process(recipe, stopped, stop_at=5)
    assert [p.name for p in list_checkpoints(stopped)] == ["step_000005"]
    assert len(_losses(stopped)) == 5 and not (stopped / "final").exists()
    result = _resume_in_new_process(recipe, stopped)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout and "step 5" in result.stdout
    assert len(_losses(full)) == STEPS
    assert _losses(stopped) == _losses(full)
    _assert_bitwise_equal_weights(stopped / "final", full / "final")


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_then_resume(world, reference, tmp_path):
    recipe = _recipe(world, tmp_path, workers=0, checkpoint_every=3)
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "clipforge", "train", "--config", str(recipe), "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, PAUSE_ENV: "6:60"})
    partial = run / "checkpoints" / ".tmp_step_000006" / "model.safetensors"
    deadline = time.monotonic() + 240
    while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert partial.exists(), f"the run never reached the paused checkpoint write: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)  # half-way through writing step 6
    proc.wait(timeout=30)
    assert [p.name for p in list_checkpoints(run)] == ["step_000003"]

    messages = _resume_in_process(recipe, run)  # the killed process is gone: any new one resumes
    assert "removed .tmp_step_000006: a checkpoint whose writing was interrupted" in messages
    assert f"resumed from {run / 'checkpoints' / 'step_000003'} (step 3, epoch 0)" in messages
    assert _losses(run) == _losses(reference)  # records past step 3 from the killed process were dropped
    _assert_bitwise_equal_weights(run / "final", reference / "final")

    # Damage the newest checkpoint: resuming skips it, says so, and uses the one before.
    newest, previous = list_checkpoints(run)[-1], list_checkpoints(run)[-2]
    state = newest / "train_state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(Exception, match="truncated or corrupt"):
        read_checkpoint(newest)
    messages = _resume_in_process(recipe, run)
    skipped = next(m for m in messages if m.startswith(f"skipping checkpoint {newest.name}"))
    assert "truncated or corrupt" in skipped
    assert f"resumed from {previous} (step {int(previous.name[5:])}, epoch 0)" in messages
    _assert_bitwise_equal_weights(run / "final", reference / "final")


def _resume_in_process(recipe: Path, out: Path) -> list[str]:
    messages: list[str] = []
    config = load_config(recipe, {"run.out": str(out), "checkpoint.resume": "latest"})
    Trainer(config, echo=messages.append).train()
    return messages
