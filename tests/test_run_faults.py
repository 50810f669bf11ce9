"""What a run leaves behind after faults: data reports, metrics.jsonl, the run's tokenizer, declared
dependencies and what the README promises.

The kill tests SIGKILL a real `clipforge train` process at the moment that used to do damage
(test hooks pause it there): while the run's tokenizer is written, after its last step but before
its first checkpoint, and while metrics.jsonl is rewritten on resume.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipforge.data.report import DataReport, ErrorBudgetExceeded
from clipforge.paths import WRITE_PAUSE_ENV
from clipforge.tokenizer import train_bpe
from clipforge.train.config import load_config
from clipforge.train.logging import read_metrics
from clipforge.train.loop import Trainer
from clipforge.train.state import PAUSE_ENV, list_checkpoints
from test_data_common import bad_shard, make_shards

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6


@pytest.fixture(autouse=True)
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Four shards of tiny JPEGs with captions; the last holds one of every kind of bad sample."""
    folder = tmp_path_factory.mktemp("shards")
    make_shards(folder, [12, 12, 12], with_counts=False)
    bad = bad_shard(folder / "00003.tar")
    (folder / "bad.json").write_text(json.dumps(bad))
    (folder / "captions.txt").write_text("\n".join(f"sample {c} thing" for c in ("red", "green", "blue") * 8))
    return folder


def _recipe(shards: Path, tmp: Path, **data) -> Path:
    recipe = {
        "run": {"steps": STEPS, "seed": 1, "threads": 1, "device": "cpu"},
        "model": {"name": "tiny-rn", "text": {"context_length": 16}},
        "tokenizer": {"source": "learn", "vocab_size": 560, "captions": str(shards / "captions.txt")},
        "data": {"shards": str(shards / "{00000..00003}.tar"), "batch_size": 4, "workers": 0,
                 "error_budget": 0.5, **data},
        "schedule": {"warmup_steps": 2},
        "checkpoint": {"every": 0},
        "log": {"every": 1, "tensorboard": False},
    }
    path = tmp / "recipe.json"
    path.write_text(json.dumps(recipe))
    return path


# ---- 1, 2: the data report --------------------------------------------------------------------------


@pytest.mark.slow
def test_every_run_writes_its_data_report_and_shows_skips(shards, tmp_path):
    """No data.report set: the run writes <run>/data_report.json at each checkpoint, at the end of
    the epoch and when it stops, and the progress line counts the skipped samples."""
    bad = json.loads((shards / "bad.json").read_text())
    config = load_config(_recipe(shards, tmp_path), {"run.out": str(tmp_path / "run"), "run.steps": "100"})
    trainer = Trainer(config, echo=lambda message: None)
    trainer.progress.stream = progress = io.StringIO()
    per_epoch = trainer.steps_per_epoch
    trainer.train(stop_at=2)
    report_path = tmp_path / "run" / "data_report.json"
    stopped = json.loads(report_path.read_text())
    checkpoint_state = torch.load(list_checkpoints(tmp_path / "run")[-1] / "train_state.pt", weights_only=True)
    assert stopped == checkpoint_state["data"][0]["report"]  # written with the checkpoint, same counts
    lines = [line for line in progress.getvalue().splitlines() if line.startswith("step ")]
    skipped = [int(re.search(r"\| (\d+) samples skipped", line).group(1)) for line in lines]
    assert skipped[-1] == stopped["skipped"] + stopped["lost"] == read_metrics(tmp_path / "run")[-1]["data_skipped"]

    trainer.train(stop_at=per_epoch)  # to the end of epoch 0: the whole epoch's report
    whole = json.loads(report_path.read_text())
    assert whole["epoch"] == 0 and whole["skipped"] == len(bad) and skipped[-1] <= len(bad)
    assert {s["key"]: s["reason"] for s in whole["samples"]} == bad
    assert whole["skipped_by_shard"] == {"00003.tar": len(bad)}


def test_the_error_budget_stop_lists_what_it_saw_so_far():
    report = DataReport()
    for shard, n in (("a.tar", 1), ("b.tar", 3), ("c.tar", 2)):
        for i in range(n):
            report.add_bad(shard, f"k{i}", "corrupt_image")
    report.seen = 10
    with pytest.raises(ErrorBudgetExceeded) as caught:
        report.check_budget(0.1, expected=40)
    message = str(caught.value)
    assert "worst shard so far: b.tar (3 errors)" in message
    assert "errors per shard so far: b.tar=3, c.tar=2, a.tar=1;" in message


# ---- 3, 4: SIGKILL at the vulnerable moments ----------------------------------------------------


def _start(recipe: Path, run: Path, env: dict, resume: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "clipforge", "train", "--config", str(recipe), "--out", str(run)]
    return subprocess.Popen(cmd + (["--resume", "latest"] if resume else []), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


def _kill_when(proc: subprocess.Popen, ready, what: str) -> None:
    deadline = time.monotonic() + 240
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready(), f"the run never reached {what}: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sigkill_while_writing_the_tokenizer_or_the_log_loses_nothing(shards, tmp_path):
    recipe = _recipe(shards, tmp_path)
    reference = tmp_path / "reference"
    Trainer(load_config(recipe, {"run.out": str(reference)}), echo=lambda message: None).train()
    run = tmp_path / "run"
    saved = run / "tokenizer"

    # The first start is killed while it writes the run's tokenizer.json: nothing half-written remains.
    proc = _start(recipe, run, {WRITE_PAUSE_ENV: "tokenizer.json:120"})
    _kill_when(proc, lambda: any(saved.glob(".tokenizer.json.*.tmp")), "the tokenizer write")
    assert not (saved / "tokenizer.json").exists() and (saved / "bpe_merges.txt.gz").stat().st_size > 0

    # Killed after its last step, before its first (here: only) checkpoint is complete.
    proc = _start(recipe, run, {PAUSE_ENV: f"{STEPS}:120"})
    _kill_when(proc, lambda: (run / "checkpoints" / f".tmp_step_{STEPS:06d}" / "model.safetensors").exists(),
               "the checkpoint write")
    assert not list_checkpoints(run) and [r["step"] for r in _records(run)] == list(range(1, STEPS + 1))
    tokenizer_inode = (saved / "tokenizer.json").stat().st_ino

    # A resume finds no checkpoint, so it starts at step 0 and rewrites the log empty: killed there,
    # the old log is still whole.
    proc = _start(recipe, run, {WRITE_PAUSE_ENV: "metrics.jsonl:120"})
    _kill_when(proc, lambda: any(run.glob(".metrics.jsonl.*.tmp")), "the metrics rewrite")
    assert [r["step"] for r in _records(run)] == list(range(1, STEPS + 1))

    # Started again in the same folder (no --resume): the log starts clean, the tokenizer is the one
    # written once, and the run equals the uninterrupted one bit for bit.
    proc = _start(recipe, run, {}, resume=False)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    assert [r["loss_hex"] for r in _records(run)] == [r["loss_hex"] for r in _records(reference)]
    assert (saved / "tokenizer.json").stat().st_ino == tokenizer_inode
    assert not [p.name for p in run.rglob("*.tmp")]
    ours, theirs = load_file(str(run / "final" / "model.safetensors")), load_file(str(reference / "final" / "model.safetensors"))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_rewrite_killed_between_its_renames_keeps_the_complete_copy(tmp_path):
    """replace_dir moves the old directory aside before renaming the new one in; a kill between the
    two renames leaves .old_<name> (complete) and .tmp_<name>: the next start puts the old one back."""
    from clipforge.train.state import remove_unfinished, replace_dir

    root = tmp_path / "checkpoints"
    replace_dir(root / "step_000003", lambda d: (d / "weights").write_text("three"))
    (root / "step_000003").rename(root / ".old_step_000003")  # the state between the two renames
    (root / ".tmp_step_000003").mkdir()
    assert [p.name for p in remove_unfinished(tmp_path)] == [".tmp_step_000003"]
    assert (root / "step_000003" / "weights").read_text() == "three" and not list(root.glob(".*"))
    replace_dir(root / "step_000003", lambda d: (d / "weights").write_text("again"))
    assert (root / "step_000003" / "weights").read_text() == "again" and not list(root.glob(".*"))


# ---- 5, 6, 7: what the project promises --------------------------------------------------------------


@pytest.mark.slow  # two data workers are two processes
def test_data_order_depends_on_ranks_and_workers_as_documented(shards):
    """Same configuration: same order. Another number of ranks or workers: the same samples in another
    order (so 'equals a single process' holds for the same global batch, not the same data order)."""
    from clipforge.data.loader import DataConfig, build_loader
    from test_data_common import plain_transform, toy_tokenizer

    def order(world_size: int, workers: int) -> list[str]:
        config = DataConfig(shards=str(shards / "{00000..00002}.tar"), batch_size=3, workers=workers)
        loaders = [build_loader(config, plain_transform, toy_tokenizer, r, world_size) for r in range(world_size)]
        keys = []
        for batches in zip(*loaders):  # step by step, rank-major: the global batch
            keys += [k for batch in batches for k in batch.keys]
        return keys

    one, again, two_ranks, two_workers = order(1, 1), order(1, 1), order(2, 1), order(1, 2)
    assert one == again
    assert set(one) == set(two_ranks) == set(two_workers)  # (two slots also repeat some as padding)
    assert one[:len(set(one))] != two_ranks[:len(set(one))] and one != two_workers
    assert "depends on the number of ranks and of data workers" in " ".join(DataConfig.__doc__.split())
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "for the same global batch" in readme and "data order depends on the number of ranks" in readme


def _imported_modules() -> set[str]:
    names = set()
    for path in (ROOT / "src" / "clipforge").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"clipforge", "__future__"}


def test_every_imported_package_is_declared():
    from importlib.metadata import packages_distributions

    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    declared = {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}
    providers = packages_distributions()
    undeclared = {}
    for module in sorted(_imported_modules()):
        # not installed here (e.g. tomli on Python >= 3.11): its own name must be declared
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        if not dists & declared:
            undeclared[module] = sorted(dists) or "not installed"
    assert not undeclared, f"imported by src/clipforge but not declared in pyproject.toml: {undeclared}"


HISTORY = re.compile(r"this session|that hour|this hour|this VM|first pass|second pass|third pass|fourth pass"
                     r"|before it[:,]|after this session", re.IGNORECASE)


def test_readme_states_the_present_not_its_history():
    text = (ROOT / "README.md").read_text()
    found = [m.group(0) for m in HISTORY.finditer(text)]
    assert not found, f"README carries history (it belongs in benchmarks/results/): {found}"
