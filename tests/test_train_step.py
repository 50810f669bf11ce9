"""The training step reads the device once: loss, gradient norm, diagnostics and the finiteness check
travel together in one ``tolist``, after one all-reduce. Also: fused AdamW resumes bitwise.

On a GPU every read of a tensor's value (``item``, ``tolist``, ``float(t)``, ``if t:``, ...) stalls the
queue until the device catches up. The count here is taken on the CPU by wrapping those Tensor
methods and recording each call made from clipforge's own code while ``_optimizer_step`` runs, so a
re-added ``.item()`` or ``float(tensor)`` anywhere in the step fails the test.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch

import clipforge
from clipforge.train import loop
from clipforge.train.config import load_config
from clipforge.train.logging import read_metrics
from test_train_faults import TensorLoader, _trainer

pytestmark = pytest.mark.usefixtures("one_thread")

PACKAGE = str(Path(clipforge.__file__).parent)
READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__index__", "__bool__")
# Token trimming reads the longest caption of the batch's token ids while they are still host tensors,
# before they move to the device (clipforge.fastpath.trim_tokens): not a device read.
HOST_SIDE = {("tokens.py", "trimmed_length")}


@contextlib.contextmanager
def counting_reads():
    """Every value read made from clipforge code while active: a list of (file, function, method)."""
    reads: list[tuple[str, str, str]] = []
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name, original):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code
            if caller.co_filename.startswith(PACKAGE):
                reads.append((Path(caller.co_filename).name, caller.co_name, name))
            return original(self, *args, **kwargs)
        return read

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield reads
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _count_step_reads(trainer, monkeypatch) -> tuple[list[list[tuple[str, str, str]]], list[int]]:
    """Train, recording the device reads and all-reduces of each optimizer step."""
    per_step, reductions = [], []
    step, reduce = trainer._optimizer_step, loop.all_reduce_mean

    def counted_reduce(value):
        reductions[-1] += 1
        return reduce(value)

    def counted_step(batches, lr):
        reductions.append(0)
        with counting_reads() as reads:
            record = step(batches, lr)
        per_step.append([r for r in reads if r[:2] not in HOST_SIDE])
        return record

    monkeypatch.setattr(loop, "all_reduce_mean", counted_reduce)
    monkeypatch.setattr(trainer, "_optimizer_step", counted_step)
    trainer.train()
    return per_step, reductions


ONE_READ = [("loop.py", "_read_scalars", "tolist")]


@pytest.mark.parametrize("changes", [
    {"optim.clip_grad_norm": "1.0"},
    {"loss.kind": "siglip", "run.accum_steps": "2", "optim.fused": "true"},
], ids=["clip-clipped", "siglip-accum-fused"])
def test_one_device_read_and_one_all_reduce_per_step(tmp_path, monkeypatch, changes):
    trainer = _trainer(tmp_path, TensorLoader(4, 4, 530), [], **{"run.steps": "2", **changes})
    per_step, reductions = _count_step_reads(trainer, monkeypatch)
    assert per_step == [ONE_READ, ONE_READ], per_step
    assert reductions == [1, 1]
    records = read_metrics(tmp_path / "run")
    assert len(records) == 2 and all(isinstance(r["grad_norm"], float) and r["grad_norm"] > 0 for r in records)
    expected = {"i2t_acc", "t2i_acc", "logit_scale"} | ({"logit_bias"} if "loss.kind" in changes else set())
    assert expected <= records[0].keys()


def test_a_skipped_step_still_reads_once(tmp_path, monkeypatch):
    messages: list[str] = []
    trainer = _trainer(tmp_path, TensorLoader(3, 4, 530, bad={1}), messages, **{"run.steps": "3"})
    per_step, _ = _count_step_reads(trainer, monkeypatch)
    assert per_step == [ONE_READ] * 3, per_step
    assert [r["skipped"] for r in read_metrics(tmp_path / "run")] == [False, True, False]
    assert any(m.startswith("step 2: non-finite loss") for m in messages)


def test_the_recorded_logit_scale_is_the_one_the_step_used(tmp_path):
    trainer = _trainer(tmp_path, TensorLoader(3, 4, 530), [], **{"run.steps": "3"})
    trainer.train()
    records = read_metrics(tmp_path / "run")
    assert records[0]["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-6)  # before the first update
    assert records[-1]["logit_scale"] != pytest.approx(1 / 0.07, rel=1e-6)


def test_fused_adamw_stop_and_resume_is_bitwise_exact(tmp_path):
    fused = {"optim.fused": "true", "optim.clip_grad_norm": "1.0", "run.steps": "6"}
    full = _trainer(tmp_path / "full", TensorLoader(4, 4, 530), [], **fused)  # 6 steps: two epochs
    assert full.optimizer.defaults["fused"] is True
    full.train()
    part = _trainer(tmp_path / "part", TensorLoader(4, 4, 530), [], **fused)
    part.train(stop_at=3)
    config = load_config(tmp_path / "part" / "run" / "train_config.json", {"checkpoint.resume": "latest"})
    messages: list[str] = []
    loader = TensorLoader(4, 4, part.tokenizer.vocab_size)  # the same batches as _trainer's loaders
    resumed = loop.Trainer(config, loader=loader, tokenizer=part.tokenizer, echo=messages.append)
    resumed.train()
    assert any(m.startswith("resumed from") and "step 3" in m for m in messages)
    losses = [[r["loss_hex"] for r in read_metrics(t.run_dir)] for t in (full, resumed)]
    assert len(losses[0]) == 6 and losses[1] == losses[0]
    final, other = full.clip.state_dict(), resumed.clip.state_dict()
    assert [k for k in final if not torch.equal(final[k], other[k])] == []
    for a, b in zip(full.optimizer.state.values(), resumed.optimizer.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
