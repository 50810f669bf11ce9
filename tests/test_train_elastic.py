"""A killed or stalled rank of a real torchrun job (2 processes, gloo): never a hang, and an exact restart.

Each test runs the user's own command, ``torchrun --standalone --nproc-per-node 2 --max-restarts N -m
clipforge train --config R --out D --resume latest``, finds the workers among torchrun's children
(their RANK is in /proc/PID/environ) and sends SIGKILL or SIGSTOP to one of them.
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

from clipforge.train.logging import read_metrics
from clipforge.train.state import PAUSE_ENV, list_checkpoints
from test_data_common import make_shards

STEPS, EVERY = 8, 3


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    """Eight shards of tiny JPEGs, a 2 x 4 global batch, checkpoints at steps 3 and 6."""
    folder = tmp_path_factory.mktemp("elastic")
    make_shards(folder / "shards", [12] * 8)
    (folder / "captions.txt").write_text("\n".join(f"sample {c} thing" for c in ("red", "green", "blue") * 8))
    recipe = {
        "run": {"steps": STEPS, "seed": 2, "threads": 1, "device": "cpu"},
        "model": {"name": "tiny-rn", "text": {"context_length": 16}},
        "tokenizer": {"source": "learn", "vocab_size": 560, "captions": str(folder / "captions.txt")},
        "data": {"shards": str(folder / "shards" / "{00000..00007}.tar"), "batch_size": 4, "workers": 0},
        "schedule": {"warmup_steps": 2},
        "checkpoint": {"every": EVERY, "keep": 5},
        "log": {"every": 1, "tensorboard": False},
        "distributed": {"init_timeout_s": 120},
    }
    path = folder / "recipe.json"
    path.write_text(json.dumps(recipe))
    return path


class Job:
    """One torchrun job of the trainer; its output (all ranks, unbuffered) goes to ``<run>.log``."""

    def __init__(self, recipe: Path, run: Path, restarts: int, env: dict | None = None, *extra: str):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--max-restarts", str(restarts), "-m", "clipforge", "train", "--config", str(recipe),
               "--out", str(run), "--resume", "latest", *extra]
        self.run, self.log = run, run.with_suffix(".log")
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    def output(self) -> str:
        return self.log.read_text()

    def workers(self) -> dict[int, int]:
        """{rank: pid} of torchrun's live worker processes."""
        found = {}
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                try:
                    env = dict(item.split(b"=", 1) for item in
                               Path(f"/proc/{child}/environ").read_bytes().split(b"\0") if b"=" in item)
                except (FileNotFoundError, ProcessLookupError):
                    continue
                if b"RANK" in env:
                    found[int(env[b"RANK"])] = int(child)
        return found

    def wait_for(self, ready, what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"the job ended before {what}:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"never reached {what}:\n{self.output()[-3000:]}"
            time.sleep(0.02)

    def finish(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout=timeout)


def _steps(run: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run)] if (run / "metrics.jsonl").is_file() else []


def _exited(pid: int) -> bool:
    """Exited (a zombie waiting for torchrun to reap it) or gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def _assert_same_run(run: Path, reference: Path) -> None:
    assert [r["loss_hex"] for r in read_metrics(run)] == [r["loss_hex"] for r in read_metrics(reference)]
    ours, theirs = load_file(str(run / "final" / "model.safetensors")), load_file(str(reference / "final" / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.fixture(scope="module")
def reference(recipe) -> Path:
    """The uninterrupted job."""
    job = Job(recipe, recipe.parent / "reference", restarts=0)
    assert job.finish() == 0, job.output()[-3000:]
    assert _steps(job.run) == list(range(1, STEPS + 1))
    return job.run


@pytest.mark.slow
def test_restarts_resume_exactly_after_killing_either_rank(recipe, reference, tmp_path):
    """Rank 1 is killed 3 steps after checkpoint 3 (while rank 0 writes checkpoint 6), then rank 0 is
    killed half-way through writing checkpoint 6: both restarts resume from checkpoint 3 on every rank,
    and the finished run equals the uninterrupted one bit for bit."""
    tmp_ckpt = tmp_path / "run" / "checkpoints" / f".tmp_step_{2 * EVERY:06d}" / "model.safetensors"
    job = Job(recipe, tmp_path / "run", restarts=2, env={PAUSE_ENV: f"{2 * EVERY}:3"})
    job.wait_for(tmp_ckpt.exists, "the write of checkpoint 6")
    first = job.workers()
    assert _steps(job.run)[-1] == 2 * EVERY  # records 4-6 lie past checkpoint 3
    os.kill(first[1], signal.SIGKILL)

    removed = "removed .tmp_step_000006: a checkpoint whose writing was interrupted"
    job.wait_for(lambda: removed in job.output() and tmp_ckpt.exists(), "checkpoint 6 again, after a restart")
    second = job.workers()
    assert set(second.values()).isdisjoint(first.values())
    os.kill(second[0], signal.SIGKILL)  # the writer, mid-write

    assert job.finish() == 0, job.output()[-3000:]
    resumed = f"resumed from {job.run / 'checkpoints' / 'step_000003'} (step 3, epoch 0)"
    assert job.output().count(removed) == 2 and job.output().count(resumed) == 2
    assert [p.name for p in list_checkpoints(job.run)] == ["step_000003", "step_000006", "step_000008"]
    _assert_same_run(job.run, reference)


@pytest.mark.slow
def test_without_restarts_a_kill_ends_the_job_and_the_run_resumes(recipe, reference, tmp_path):
    """--max-restarts 0: rank 1 killed (while rank 0 writes checkpoint 6), the job exits non-zero at
    once; one process refuses the two-rank checkpoint and says what to do; the same two-rank command
    then finishes the run exactly."""
    job = Job(recipe, tmp_path / "run", restarts=0, env={PAUSE_ENV: f"{2 * EVERY}:3"})
    tmp_ckpt = job.run / "checkpoints" / f".tmp_step_{2 * EVERY:06d}" / "model.safetensors"
    job.wait_for(tmp_ckpt.exists, "the write of checkpoint 6")
    os.kill(job.workers()[1], signal.SIGKILL)
    killed = time.monotonic()
    assert job.finish(timeout=60) != 0
    assert time.monotonic() - killed < 20

    single = subprocess.run([sys.executable, "-m", "clipforge", "train", "--config", str(recipe), "--out",
                             str(job.run), "--resume", "latest"], capture_output=True, text=True, timeout=300)
    assert single.returncode == 2
    assert "was written by 2 process(es) and this run has 1" in single.stderr
    assert "torchrun --nproc-per-node 2" in single.stderr and "model.pretrained=" in single.stderr

    again = Job(recipe, job.run, restarts=0)
    assert again.finish() == 0, again.output()[-3000:]
    _assert_same_run(job.run, reference)


@pytest.mark.slow
def test_a_stalled_rank_is_named_and_never_hangs_the_job(recipe, tmp_path):
    """SIGSTOP of rank 1 in training: rank 0 exits non-zero within its 5 s step timeout plus a small
    margin, naming itself, the step, the collective and rank 1 as the one not responding."""
    timeout = 5
    job = Job(recipe, tmp_path / "run", 0, None, "--set", f"distributed.step_timeout_s={timeout}",
              "--set", "run.steps=40", "--set", "checkpoint.every=0")  # no checkpoint barrier in the way
    job.wait_for(lambda: _steps(job.run)[-1:] >= [2], "step 2")
    ranks = job.workers()
    os.kill(ranks[1], signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        job.wait_for(lambda: _exited(ranks[0]), "rank 0's exit", timeout=120)
        waited = time.monotonic() - stopped
    finally:
        os.kill(ranks[1], signal.SIGCONT)  # so that torchrun's SIGTERM ends it now
    assert job.finish(timeout=60) != 0
    assert timeout <= waited < timeout + 10, waited
    report = next(line for line in job.output().splitlines() if line.startswith("clipforge train: error: rank 0:"))
    assert "timeout 5 s" in report and "stalled or lost: rank(s) 1" in report, report
    step = int(report.split("step ")[1].split(":")[0])
    assert step > 2 and any(what in report for what in ("all-gather of features", "broadcast of buffers",
                                                        "gradient all-reduce", "checkpoint barrier")), report
    assert "  rank 1: not responding for" in job.output()


LAST_RESORT = """
import time, torch.distributed as dist
from clipforge.train import watch
store = dist.TCPStore("127.0.0.1", 0, 1, True, wait_for_workers=False)
watch.start(store, rank=0, world_size=2, timeout_s=1.0)
with watch.region(7, "training step"):
    with watch.waiting("a collective that never returns"):
        time.sleep(120)
"""


@pytest.mark.slow
def test_a_collective_that_outlives_its_timeout_ends_the_process():
    """The last resort, for a call that ignores its timeout: the heartbeat thread reports and exits."""
    from clipforge.train.watch import EXIT_STALLED

    began = time.monotonic()
    result = subprocess.run([sys.executable, "-c", LAST_RESORT], capture_output=True, text=True, timeout=100)
    assert result.returncode == EXIT_STALLED and time.monotonic() - began < 60
    assert ("rank 0: step 7: a collective that never returns: still waiting 3 s after its 1 s timeout; "
            "stalled or lost: rank(s) 1") in result.stderr
    assert "  rank 1: no heartbeat in the store" in result.stderr


def test_the_timeouts_are_recipe_keys_checked_like_any_other():
    from clipforge.train.config import ConfigError, load_config

    config = load_config(None, {"distributed.step_timeout_s": "5", "distributed.init_timeout_s": "60"})
    assert (config.distributed.step_timeout_s, config.distributed.init_timeout_s) == (5.0, 60.0)
    assert config.distributed.checkpoint_timeout_s == 600.0
    with pytest.raises(ConfigError, match="distributed.step_timeout_s must be > 0"):
        load_config(None, {"distributed.step_timeout_s": "0"})
    with pytest.raises(ConfigError, match="unknown config key 'distributed.timeout'"):
        load_config(None, {"distributed.timeout": "5"})
