"""The main job, shortened: a small world, about a minute of training from scratch, zero-shot evaluation.

Real learning, not only a falling loss: zero-shot accuracy on the held-out colour × shape pairs
(compositions no training image contains) must reach three times chance.
"""

from __future__ import annotations

import json

import pytest
import torch

from clipforge.cli import main
from clipforge.train.logging import read_metrics

QUICK = [
    "world.num_train=4000", "world.shard_size=1000", "world.eval_per_class=10", "world.num_retrieval=20",
    "run.steps=60", "run.threads=2", "run.max_seconds=none", "schedule.warmup_steps=10", "checkpoint.every=0", "log.every=10",
    "eval.every=30", "eval.max_images=80",
]


@pytest.fixture(autouse=True)
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.mark.slow
def test_quick_demo_learns_held_out_compositions(tmp_path, capsys):
    argv = ["demo", "--out", str(tmp_path), "--suite", "zeroshot"]
    for item in QUICK:
        argv += ["--set", item]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "[4/4] summary" in printed and "zero-shot heldout" in printed

    summary = json.loads((tmp_path / "summary.json").read_text())
    heldout = summary["zero_shot"]["heldout"]
    assert heldout["chance"] == pytest.approx(1 / 8)
    assert heldout["acc1"] >= 3 * heldout["chance"], summary["zero_shot"]

    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["zeroshot"]["heldout"]["acc1"] == heldout["acc1"]
    train = read_metrics(tmp_path / "train")
    assert len(train) == 60 and sum(r["loss"] for r in train[-10:]) < sum(r["loss"] for r in train[:10])
    evals = read_metrics(tmp_path / "train", "eval")
    assert [r["step"] for r in evals] == [30, 60] and evals[-1]["task"] == "heldout"
    assert (tmp_path / "train" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "train" / "train_config.json").is_file()
