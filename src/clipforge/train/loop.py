"""The trainer: one loop for every variant (loss, locked towers, precision, accumulation, DDP/FSDP).

``Trainer(config).train()`` reads as the loop it runs: next batches, schedule, step, log, evaluate,
checkpoint. Everything it needs to continue exactly after a stop lives in the checkpoint
(:mod:`clipforge.train.state`).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from clipforge.train import state as ckpt
from clipforge import families, fastpath
from clipforge.train import watch
from clipforge.train.accumulate import StepContext, forward_backward
from clipforge.train.build import (
    accumulation, build_clip, build_loader, build_tokenizer, model_config, run_tokenizer, total_steps,
)
from clipforge.train.config import TokenizerSection, TrainConfig
from clipforge.train.distributed import (
    all_reduce_mean, barrier, broadcast_object, gather_objects, init_distributed, is_fsdp, set_timeout, unwrap,
    wrap_model,
)
from clipforge.train.logging import MetricsLog, Progress
from clipforge.train.losses import build_loss
from clipforge.train.objective import TrainModel
from clipforge.train.optim import apply_locks, build_optimizer, clip_gradients, learning_rate, set_learning_rate
from clipforge.train.precision import Precision, store_towers
from clipforge.transforms import preprocess_for

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


class NonFiniteError(RuntimeError):
    """Too many consecutive steps had a NaN/Inf loss or gradient."""


class Trainer:
    """Builds the run from a :class:`TrainConfig`; ``loader``/``tokenizer`` may be given (tests, demo)."""

    def __init__(self, config: TrainConfig, *, loader: Any = None, tokenizer: Any = None,
                 echo: Callable[[str], Any] = print):
        self.cfg, self.run_dir = config, Path(config.run.out)
        self.info = init_distributed(config.run.device, config.distributed)
        self.echo = echo if self.info.is_main else (lambda message: None)
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        self._prepare_run_dir()
        self.tokenizer = tokenizer or self._build_tokenizer()
        self.clip = build_clip(config, self.tokenizer)
        self.loss = build_loss(config.loss)
        if not config.model.pretrained:
            self.loss.init_model(self.clip)  # the temperature (and bias) the loss starts from
        store_towers(self.clip, config.precision)  # bf16 towers (no float32 copy), before DDP/FSDP see dtypes
        self._seed_rank()
        self.train_model = TrainModel(self.clip, self.loss, config.precision.channels_last)
        self.frozen = apply_locks(self.clip, config.optim)
        self.clip.set_grad_checkpointing(config.precision.grad_checkpointing)
        self.model = wrap_model(self.train_model.to(self.info.device), config.run.distributed, self.info)
        if config.precision.compile:
            self.model.compile()
        elif self.info.distributed:  # (hooks that write Python state would break a compiled graph)
            watch.label_forward(self.model, self.train_model)
        self.optimizer = build_optimizer(self.model, config.optim, families.of(self.clip.config.vision).adam,
                                         seed=config.run.seed)
        self.precision = Precision(config.precision, self.info.device)
        self.step_context = StepContext(self.info.device, self.precision.autocast, self.precision.scale,
                                        self._trims_tokens())
        self.loader = loader or build_loader(config, self.clip.image_size, self.tokenizer,
                                             self.info.rank, self.info.world_size)
        self.accum_steps = accumulation(config.run, self.loader_batch_size(), self.info.world_size)
        self.steps_per_epoch = len(self.loader) // self.accum_steps
        if self.steps_per_epoch < 1:
            raise ValueError(f"an epoch has {len(self.loader)} batches, fewer than the {self.accum_steps} micro-batches "
                             "of a step (run.accum_steps or run.global_batch): lower them or data.batch_size")
        self.total_steps = total_steps(config.run, self.steps_per_epoch)
        self.step, self.epoch, self.epoch_step, self.skipped = 0, 0, 0, 0
        self._batches, self._warm = None, False  # warm: a step ran in this process (step timeout from then on)
        self.evaluator = self._build_evaluator()
        self.metrics = MetricsLog(self.run_dir, self.info.is_main, config.log.tensorboard)
        global_batch = self.loader_batch_size() * self.accum_steps * self.info.world_size
        self.progress = Progress(self.total_steps, global_batch, config.log.every, self.info.is_main)

    # ---- setup ------------------------------------------------------------------------------------

    def _prepare_run_dir(self) -> None:
        if not self.cfg.checkpoint.resume and ckpt.list_checkpoints(self.run_dir):
            raise ValueError(f"run directory {self.run_dir} already holds checkpoints: resume it (--resume latest) "
                             "or choose another run.out (--out)")
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.cfg.save(self.run_dir / "train_config.json")
            for stale in ckpt.remove_unfinished(self.run_dir):
                self.echo(f"removed {stale.name}: a checkpoint whose writing was interrupted")
        with watch.region(0, "start-up barrier (rank 0 prepares the run directory)"):
            barrier()

    def _build_tokenizer(self):
        """Rank 0 builds the tokenizer at the run's first start and saves it in the run directory
        (once, atomically); every later start and every other rank reads that copy."""
        context = model_config(self.cfg.model).text.context_length
        saved = self.run_dir / "tokenizer"
        tokenizer = run_tokenizer(self.cfg.tokenizer, context, saved, self.echo) if self.info.is_main else None
        with watch.region(0, "start-up barrier (rank 0 writes the tokenizer)"):
            barrier()
        return tokenizer or build_tokenizer(TokenizerSection(source=str(saved)), context)

    def _seed_rank(self) -> None:
        """Per-rank random streams (dropout, patch dropout); the model itself was seeded identically."""
        import random

        import numpy as np

        seed = self.cfg.run.seed * 1000 + self.info.rank
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

    def _build_evaluator(self):
        if self.cfg.eval.every <= 0:
            return None
        from clipforge.train.evaluate import PeriodicEval

        return PeriodicEval(self.cfg.eval, preprocess_for(self.clip.config), self.tokenizer)

    def _trims_tokens(self) -> bool:
        """Whether steps cut token batches after the longest caption: where exact, unless turned off."""
        asked, exact = self.cfg.run.trim_tokens, fastpath.trims_exactly(self.clip)
        if asked and not exact:
            kind = self.clip.config.text.kind
            raise ValueError(f"run.trim_tokens = true, but the {kind!r} text tower's outputs depend on positions "
                             "after the captions: trimming would change them; leave run.trim_tokens unset")
        return exact if asked is None else asked

    def loader_batch_size(self) -> int:
        return getattr(getattr(self.loader, "config", None), "batch_size", None) or self.cfg.data.batch_size

    # ---- the loop -------------------------------------------------------------------------------

    def train(self, stop_at: int | None = None) -> dict[str, Any]:
        """Train to ``run.steps`` (or ``stop_at``, checkpointing there, to be resumed later)."""
        self._resume()
        # Records past the starting step were written by a run killed before its next checkpoint.
        self.metrics.truncate_after(self.step)
        end = self.total_steps if stop_at is None else min(stop_at, self.total_steps)
        self._train_mode()
        self.echo(f"training {self.total_steps} steps ({self.steps_per_epoch} per epoch) from step {self.step}, "
                  f"{self.info.world_size} process(es) on {self.info.device}, run directory {self.run_dir}")
        start, first, record = time.perf_counter(), self.step, {}
        self.progress.start(self.step)
        try:
            while self.step < end:
                watch.at(self.step + 1, "loading data")
                batches = self._next_batches()
                lr = self._schedule()
                with watch.region(self.step + 1, "forward and backward"):
                    record = self._optimizer_step(batches, lr)
                self._log(record)
                self._after_step()
                if self._due(self.cfg.eval.every):
                    self._evaluate()
                if self._due(self.cfg.checkpoint.every):
                    self._checkpoint()
                if self._out_of_time(start):
                    break
            if not self._due(self.cfg.checkpoint.every) and self.step > first:
                self._checkpoint()
            if self.step >= self.total_steps or self.step < end:  # finished, or the time budget ran out
                self._save_final()
        finally:
            self._write_data_report()  # also when stopped by the error budget or any other error
            self.metrics.close()
        elapsed = time.perf_counter() - start
        samples = (self.step - first) * self.progress.samples_per_step
        return {"step": self.step, "loss": record.get("loss"), "seconds": elapsed,
                "samples_per_second": samples / elapsed if elapsed > 0 else float("nan")}

    def _out_of_time(self, start: float) -> bool:
        """True once run.max_seconds have passed (rank 0's clock decides for every rank)."""
        budget = self.cfg.run.max_seconds
        if budget is None:
            return False
        with watch.region(self.step, "broadcast of the time budget"):
            spent = bool(broadcast_object(time.perf_counter() - start > budget))
        if spent:
            self.echo(f"time budget of {budget:.0f} s spent: stopping at step {self.step} of {self.total_steps}")
        return spent

    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def _after_step(self) -> None:
        """The first step (compilation, data workers starting) ran under the start-up timeout; the
        rest run under the step timeout. The data report is written when an epoch ends."""
        if not self._warm:
            self._warm = True
            set_timeout(self._step_timeout())
        if self.epoch_step == self.steps_per_epoch:
            self._write_data_report()

    def _step_timeout(self) -> float:
        section = self.cfg.distributed
        return section.step_timeout_s if self._warm else section.init_timeout_s

    @contextmanager
    def _slow_collectives(self, what: str):
        """Collectives around long work on rank 0 (checkpoint, evaluation): the checkpoint timeout."""
        set_timeout(self.cfg.distributed.checkpoint_timeout_s)
        try:
            with watch.region(self.step, what):
                yield
        finally:
            set_timeout(self._step_timeout())

    def _write_data_report(self) -> None:
        """Every rank's bad-data report (``<run>/data_report[.rankR].json``), when its loader keeps one."""
        getattr(self.loader, "write_report", lambda: None)()

    def _data_errors(self) -> int:
        """Samples skipped or lost so far in this epoch on this rank (0 for loaders without a report)."""
        return getattr(getattr(self.loader, "report", None), "errors", 0)

    def _next_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The step's ``accum_steps`` micro-batches; a new epoch starts when this one's steps are done."""
        if self.epoch_step >= self.steps_per_epoch:
            self.epoch, self.epoch_step, self._batches = self.epoch + 1, 0, None
        if self._batches is None:
            self.loader.set_epoch(self.epoch)  # keeps a restored mid-epoch position
            self._batches = iter(self.loader)
        micro = []
        for _ in range(self.accum_steps):
            images, tokens = next(self._batches)
            micro.append((images, tokens))
        self.epoch_step += 1
        return micro

    def _schedule(self) -> float:
        lr = learning_rate(self.step, self.cfg.optim.lr, self.total_steps, self.cfg.schedule)
        set_learning_rate(self.optimizer, lr)
        return lr

    def _optimizer_step(self, batches, lr: float) -> dict[str, Any]:
        """Gradients, checks, update. A NaN/Inf loss or gradient skips the update entirely.

        The step reads the device once (:meth:`_read_scalars`): whether to update depends on the
        loss and gradient being finite, so that one read is unavoidable; everything else the record
        needs travels with it.
        """
        self.optimizer.zero_grad(set_to_none=True)
        buffers = [b.detach().clone() for b in self.clip.buffers()]  # BatchNorm statistics of a bad batch are undone
        loss, diagnostics = forward_backward(self.model, batches, self.step_context)
        self.precision.unscale(self.optimizer)
        # The norm is also the gradient finiteness check (a NaN/Inf anywhere makes it non-finite),
        # so it is needed every step, clipping or not.
        watch.doing("gradient norm")
        grad_norm = clip_gradients(self.model, self.cfg.optim.clip_grad_norm)
        watch.doing("all-reduce of the step's loss and diagnostics")
        scalars = self._read_scalars(loss, grad_norm, diagnostics)
        loss_value, norm_value = scalars.pop("loss"), scalars.pop("grad_norm")
        finite = math.isfinite(loss_value) and math.isfinite(norm_value)
        if finite:
            self.precision.step(self.optimizer)
            self.loss.after_step(self.clip)
            self.skipped = 0
        else:
            with torch.no_grad():
                for live, saved in zip(self.clip.buffers(), buffers):
                    live.copy_(saved)
            self._skip(loss_value, norm_value)
        self.precision.update()
        self.step += 1
        # logit_scale (a diagnostic) is the temperature this step's loss was computed with, i.e. the
        # value before this step's update (the previous step's value after its update).
        return {"kind": "train", "step": self.step, "epoch": self.epoch, "loss": loss_value,
                "loss_hex": loss_value.hex(), "lr": lr, "grad_norm": norm_value, "skipped": not finite, **scalars}

    def _read_scalars(self, loss: torch.Tensor, grad_norm: torch.Tensor,
                      diagnostics: dict[str, torch.Tensor]) -> dict[str, float]:
        """The step's scalars as Python floats with one collective and one device-to-host read.

        ``loss`` and the 0-dim ``diagnostics`` are averaged over ranks in one all-reduce (stacked);
        ``grad_norm`` is global already. Every read is a queue stall on a GPU, hence the one ``tolist``.
        """
        names = list(diagnostics)
        errors = loss.new_full((), float(self._data_errors()), dtype=torch.float32)  # a fill, no copy: mean x ranks = sum
        local = torch.stack([loss.float(), *(diagnostics[name].detach().float() for name in names), errors])
        reduced = all_reduce_mean(local)
        values = torch.cat([reduced, grad_norm.detach().float().reshape(1).to(reduced.device)]).tolist()
        return {"loss": values[0], **dict(zip(names, values[1:-2])), "grad_norm": values[-1],
                "data_skipped": round(values[-2] * self.info.world_size)}

    def _skip(self, loss: float, grad_norm: float) -> None:
        self.skipped += 1
        self.echo(f"step {self.step + 1}: non-finite {'loss' if not math.isfinite(loss) else 'gradient'} "
                  f"(loss {loss}, gradient norm {grad_norm}): update skipped, parameters, buffers and optimizer state "
                  f"unchanged ({self.skipped} in a row, limit {self.cfg.run.max_skipped_steps})")
        if self.skipped >= self.cfg.run.max_skipped_steps:
            raise NonFiniteError(f"step {self.step + 1}: {self.skipped} consecutive steps with a non-finite loss or "
                                 "gradient; stopping (lower optim.lr, use bf16 instead of fp16, or check the data)")

    def _log(self, record: dict[str, Any]) -> None:
        extra = f" | i2t {record['i2t_acc']:.2f} t2i {record['t2i_acc']:.2f} | {record['data_skipped']} samples skipped"
        rate = self.progress.update(self.step, record["loss"], record["lr"], record["logit_scale"], extra)
        if rate is not None:
            record["samples_per_s"] = rate
        self.metrics.write(record)

    def _train_mode(self) -> None:
        self.model.train()
        for module in self.frozen:  # locked towers keep their BatchNorm statistics
            module.eval()

    # ---- evaluation, checkpoints ------------------------------------------------------------------

    def _evaluate(self) -> None:
        """Zero-shot accuracy on the configured set: on rank 0 (every rank for FSDP, whose weights are sharded)."""
        result = None
        with self._slow_collectives("evaluation (rank 0 evaluates, the others wait)"):
            if self.info.is_main or is_fsdp(self.model):
                model = self.model if is_fsdp(self.model) else self.clip
                result = self.evaluator(model)
            self._train_mode()
            barrier()
        if result is not None and self.info.is_main:
            self.echo(f"step {self.step}: zero-shot {result['task']} acc1 {result['acc1']:.3f} "
                      f"(chance {result['chance']:.3f}, {result['n']} images)")
            self.metrics.write({"kind": "eval", "step": self.step, **result})

    def _checkpoint(self) -> Path | None:
        self._write_data_report()
        with self._slow_collectives("checkpoint: gathering the model and optimizer state"):
            model_state, optim_state = get_state_dict(self.model, self.optimizer, options=_FULL)
            watch.doing("checkpoint: gathering random states and data positions")
            rng = gather_objects(ckpt.rng_state(self.info.device))
            data = gather_objects(self.loader.state_dict())
            path = None
            if self.info.is_main:
                watch.doing(f"checkpoint: writing step {self.step}")
                path = ckpt.save_checkpoint(
                    self.run_dir, self.step, lambda d: self._write_model(d, model_state),
                    self._train_state(optim_state, model_state, rng, data), self.cfg.checkpoint.keep)
            watch.doing(f"checkpoint barrier (rank 0 writes step {self.step})")
            barrier()
        return path

    def _write_model(self, directory: Path, model_state: dict[str, torch.Tensor]) -> None:
        clip = {k.removeprefix("clip."): v for k, v in model_state.items() if k.startswith("clip.")}
        ckpt.write_model_dir(directory, clip, self.clip.config, self.tokenizer)

    def _train_state(self, optim_state, model_state, rng, data) -> dict[str, Any]:
        extra = {k: v for k, v in model_state.items() if not k.startswith("clip.")}
        return {"step": self.step, "epoch": self.epoch, "epoch_step": self.epoch_step,
                "skipped": self.skipped, "world_size": self.info.world_size, "optimizer": optim_state,
                "scaler": self.precision.state_dict(), "rng": rng, "data": data, "extra_params": extra,
                "schedule": {"total_steps": self.total_steps, "base_lr": self.cfg.optim.lr}}

    def _resume(self) -> None:
        """Load the checkpoint that rank 0 chose (the newest complete one for "latest"): every rank
        continues from the same step, even when a kill cut the newest checkpoint short."""
        target = self.cfg.checkpoint.resume
        if not target:
            return
        found = None
        if self.info.is_main:
            found = ckpt.find_resumable(self.run_dir, self.echo) if target == "latest" else (
                Path(target), *ckpt.read_checkpoint(target))
        with watch.region(0, "start-up: agreeing on the checkpoint to resume"):
            chosen = broadcast_object(None if found is None else str(found[0]))
        if chosen is None:
            self.echo(f"no complete checkpoint in {self.run_dir}: starting from scratch")
            return
        path, clip_state, state = found if found is not None else (Path(chosen), *ckpt.read_checkpoint(chosen))
        if state["world_size"] != self.info.world_size:
            raise ckpt.ResumeError(ckpt.world_size_mismatch(path, state["world_size"], self.info.world_size))
        self._load_state(clip_state, state)
        self.echo(f"resumed from {path} (step {self.step}, epoch {self.epoch})")

    def _load_state(self, clip_state: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        # The loss's parameters sit under "loss." (checkpoints written before losses were components: at the top).
        extra = {("loss.logit_bias" if k == "logit_bias" else k): v for k, v in state["extra_params"].items()}
        model_state = {f"clip.{k}": v for k, v in clip_state.items()} | extra
        set_state_dict(self.model, self.optimizer, model_state_dict=model_state,
                       optim_state_dict=state["optimizer"], options=StateDictOptions(full_state_dict=True))
        self.precision.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"][self.info.rank], self.info.device)
        self.loader.load_state_dict(state["data"][self.info.rank])
        self.step, self.epoch, self.epoch_step = state["step"], state["epoch"], state["epoch_step"]
        self.skipped, self._batches = state["skipped"], None

    def _save_final(self) -> None:
        with self._slow_collectives("final model barrier (rank 0 writes the final model)"):
            if self.info.is_main:
                final = self.run_dir / "final"
                clip_state, _ = ckpt.read_checkpoint(ckpt.list_checkpoints(self.run_dir)[-1])
                ckpt.replace_dir(final, lambda d: ckpt.write_model_dir(d, clip_state, self.clip.config, self.tokenizer))
                self.echo(f"final model written to {final}")
            barrier()
