"""``run.processes``: clipforge starts the data-parallel processes itself (PyTorch's elastic launcher,
the engine behind torchrun). Real processes on gloo: the run equals torchrun's bit for bit, stops
and resumes exactly, and a failure in the processes is reported with the command's exit code."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from clipforge.train.config import ConfigError, load_config
from clipforge.train.launch import ProcessesError, launches
from clipforge.train.logging import read_metrics


@pytest.fixture(scope="module")
def common(tmp_path_factory) -> list[str]:
    from clipforge.data.synthetic import WorldConfig, generate_world

    world = tmp_path_factory.mktemp("launch") / "world"
    generate_world(world, WorldConfig(num_train=128, num_val=0, shard_size=32, eval_per_class=2, num_retrieval=4),
                   workers=1)
    settings = {"run.steps": 4, "data.shards": f"{world}/train/{{00000..00003}}.tar", "data.batch_size": 4,
                "data.workers": 0, "tokenizer.source": "learn", "tokenizer.captions": f"{world}/train/captions.txt",
                "tokenizer.vocab_size": 600, "model.name": "tiny-vit", "model.text.context_length": 32,
                "run.threads": 1, "log.tensorboard": "false", "checkpoint.every": 0, "schedule.warmup_steps": 1,
                "eval.every": 0}
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


def _run(args: list[str], torchrun: bool = False) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"] if torchrun else []
    cmd = [sys.executable, *launcher, "-m", "clipforge", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _losses(run_dir) -> list[str]:
    return [r["loss_hex"] for r in read_metrics(run_dir)]


@pytest.mark.slow
def test_processes_train_as_torchrun_does_and_resume_exactly(common, tmp_path):
    launched, torchrun, part = tmp_path / "launched", tmp_path / "torchrun", tmp_path / "part"
    two = ["--set", "run.processes=2"]
    runs = [(two + ["--out", str(launched)], False), (two + ["--out", str(torchrun)], True),
            (two + ["--out", str(part), "--stop-at", "2"], False), (two + ["--out", str(part), "--resume", "latest"], False)]
    for args, under_torchrun in runs:
        result = _run(common + args, under_torchrun)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "2 process(es) on cpu" in result.stdout and "resumed from" in result.stdout
    assert result.stdout.count("done: step 4") == 1  # rank 0's summary, printed once
    losses = _losses(launched)
    assert len(losses) == 4 and _losses(torchrun) == losses and _losses(part) == losses
    assert (launched / "final" / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_failure_in_the_processes_gives_the_command_its_exit_code(common, tmp_path):
    one = _run(common + ["--out", str(tmp_path / "run"), "--stop-at", "2"])
    assert one.returncode == 0, one.stderr[-3000:]
    # Every rank refuses a checkpoint of another process count: exit code 2, the reason said once.
    refused = _run(common + ["--out", str(tmp_path / "run"), "--resume", "latest", "--set", "run.processes=2"])
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.count("was written by 1 process(es) and this run has 2") == 1, refused.stderr[-3000:]
    assert "clipforge train: error: training in 2 processes failed: rank 0 (exit code 2)" in refused.stderr
    assert "Traceback" not in refused.stderr  # the reason, not the launcher's log of it


@pytest.mark.slow
def test_a_launch_leaves_this_process_as_it_was(common, tmp_path):
    """The elastic agent turns SIGTERM into an exception and leaves its handler (a pool forked later
    then hangs terminating its workers): after a launch, every handler and the environment are back."""
    import multiprocessing
    import signal

    from clipforge.train.config import parse_overrides
    from clipforge.train.launch import launch

    settings = parse_overrides([arg for arg in common if arg != "--set"])
    config = load_config(None, {**settings, "run.out": str(tmp_path / "run"), "run.processes": "2"})
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}
    environment = dict(os.environ)
    assert launch(config)["step"] == 4
    assert {s: signal.getsignal(s) for s in handlers} == handlers and dict(os.environ) == environment
    with multiprocessing.get_context("fork").Pool(2) as pool:  # terminated with SIGTERM on leaving
        assert pool.map(abs, [-1, -2]) == [1, 2]


def test_processes_must_agree_with_torchrun(monkeypatch):
    config = load_config(None, {"run.processes": "2"})
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launches(config) and not launches(load_config(None, {}))
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun started the processes: it does not launch again
    assert not launches(config) and not launches(load_config(None, {}))
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ProcessesError, match=r"run.processes = 2, but torchrun started 4 processes"):
        launches(config)


def test_processes_are_checked_with_the_global_batch():
    with pytest.raises(ConfigError, match=r"run.processes = 0: expected 1 or more"):
        load_config(None, {"run.processes": "0"})
    with pytest.raises(ConfigError, match=r"not a multiple of data.batch_size × run.processes = 48 × 2"):
        load_config(None, {"run.processes": "2", "data.batch_size": "48", "run.global_batch": "144"})
    config = load_config(None, {"run.processes": "2", "data.batch_size": "48", "run.global_batch": "192"})
    assert config.run.processes == 2
