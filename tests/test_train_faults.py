"""Numerical faults: a NaN/Inf loss or gradient skips the step and leaves the state untouched;
too many in a row stop the run. Also fp16 loss scaling and bf16 autocast on the CPU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from clipforge.tokenizer import train_bpe
from clipforge.train.config import load_config
from clipforge.train.logging import read_metrics
from clipforge.train.loop import NonFiniteError, Trainer

VOCAB_CAPTIONS = ["a red circle", "a blue square", "two green stars", "a small pink heart"] * 4


class TensorLoader:
    """Random batches behind the data loader's contract (len, set_epoch, iteration from a position, state)."""

    def __init__(self, count: int, batch: int, vocab: int, bad: set[int] = frozenset(), seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.batches = []
        for index in range(count):
            images = torch.randn(batch, 3, 64, 64, generator=g)
            if index in bad:
                images[0, 0, 0, 0] = float("nan")
            tokens = torch.randint(1, vocab - 2, (batch, 12), generator=g)
            tokens[:, -1] = vocab - 1  # end-of-text: the largest id
            self.batches.append((images, tokens))
        self.config = SimpleNamespace(batch_size=batch)
        self.position, self.epoch = 0, 0

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def __iter__(self):
        while self.position < len(self.batches):
            self.position += 1
            yield self.batches[self.position - 1]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(tmp_path, loader: TensorLoader, messages: list[str], **changes) -> Trainer:
    tokenizer = train_bpe(VOCAB_CAPTIONS, 530, context_length=12)
    overrides = {"run.out": str(tmp_path / "run"), "run.steps": "6", "model.name": "tiny-rn",
                 "model.text.context_length": "12", "log.tensorboard": "false", "checkpoint.every": "0",
                 "schedule.warmup_steps": "1", **changes}
    loader.__init__(len(loader), loader.config.batch_size, tokenizer.vocab_size,
                    {i for i, b in enumerate(loader.batches) if torch.isnan(b[0]).any()})
    return Trainer(load_config(None, overrides), loader=loader, tokenizer=tokenizer, echo=messages.append)


def _snapshot(trainer: Trainer) -> tuple[dict, dict]:
    model = {k: v.clone() for k, v in trainer.clip.state_dict().items()}
    optim = {i: {k: v.clone() for k, v in s.items()} for i, s in enumerate(trainer.optimizer.state.values())}
    return model, optim


def test_a_nan_batch_skips_its_step_and_leaves_everything_untouched(tmp_path):
    messages: list[str] = []
    trainer = _trainer(tmp_path, TensorLoader(6, 4, 530, bad={2}), messages)
    trainer.train(stop_at=2)
    before_model, before_optim = _snapshot(trainer)
    trainer.train(stop_at=3)  # step 3 reads the batch with a NaN pixel
    after_model, after_optim = _snapshot(trainer)
    for key in before_model:  # parameters and BatchNorm statistics
        assert torch.equal(before_model[key], after_model[key]), key
    for index in before_optim:
        for key in before_optim[index]:
            assert torch.equal(before_optim[index][key], after_optim[index][key]), key
    assert any(m.startswith("step 3: non-finite loss") and "update skipped" in m for m in messages)
    trainer.train()  # the run goes on
    records = read_metrics(tmp_path / "run")
    assert [r["skipped"] for r in records] == [False, False, True, False, False, False]
    assert not torch.equal(after_model["text_projection"], trainer.clip.state_dict()["text_projection"])


def test_consecutive_faults_stop_the_run_with_an_error(tmp_path):
    messages: list[str] = []
    trainer = _trainer(tmp_path, TensorLoader(6, 4, 530, bad={1, 2, 3}), messages, **{"run.max_skipped_steps": "3"})
    with pytest.raises(NonFiniteError, match="step 4: 3 consecutive steps"):
        trainer.train()
    assert sum("update skipped" in m for m in messages) == 3


def test_fp16_loss_scaling_on_cpu_skips_overflow_and_lowers_the_scale(tmp_path):
    messages: list[str] = []
    trainer = _trainer(tmp_path, TensorLoader(3, 4, 530), messages, **{"precision.dtype": "fp16", "run.steps": "3"})
    trainer.precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**126)  # certain to overflow fp32 grads
    trainer.train()
    records = read_metrics(tmp_path / "run")
    assert records[0]["skipped"] and "non-finite gradient" in messages[1]
    assert trainer.precision.scaler.get_scale() < 2.0**126


def test_bf16_autocast_on_cpu_trains_close_to_fp32(tmp_path):
    losses = {}
    for dtype in ("fp32", "bf16"):
        run = tmp_path / dtype
        run.mkdir()
        trainer = _trainer(run, TensorLoader(2, 4, 530), [], **{"precision.dtype": dtype, "run.steps": "2"})
        trainer.train()
        losses[dtype] = [r["loss"] for r in read_metrics(run / "run")]
    assert losses["bf16"] != losses["fp32"]  # autocast really ran in bf16
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


def test_a_spent_time_budget_stops_with_a_checkpoint_and_a_final_model(tmp_path):
    messages: list[str] = []
    trainer = _trainer(tmp_path, TensorLoader(4, 4, 530), messages, **{"run.max_seconds": "1e-9"})
    summary = trainer.train()
    assert summary["step"] == 1 and any("time budget" in m and "step 1 of 6" in m for m in messages)
    assert (tmp_path / "run" / "checkpoints" / "step_000001").is_dir() and (tmp_path / "run" / "final").is_dir()
