"""The training data loader: shards -> (decode, transform | tokenize) -> batches, per rank.

Usage::

    loader = build_loader(DataConfig(shards="world/train/{00000..00099}.tar", batch_size=128),
                          train_transform(64), tokenizer, rank=rank, world_size=world_size)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, tokens in loader:      # FloatTensor [B,3,S,S], LongTensor [B,L]
            ...
    state = loader.state_dict()            # exact position, restore with load_state_dict

Iteration yields :class:`Batch` (``images``, ``tokens``, ``keys`` and bookkeeping); it unpacks as
``images, tokens = batch``. ``len(loader) == loader.num_batches`` is identical on every rank
(see :mod:`clipforge.data.sharding` for the equalisation by padding).

Exact resume. Each logical worker w of a rank produces a deterministic stream: its shards, shuffle
buffer and padding are seeded by (seed, epoch, slot), and each sample's augmentation by
(seed, epoch, shard/key, pass), never by process RNG state. torch's DataLoader hands out batches
round robin over workers in order, and every logical worker yields the same number of batches, so
batch k of an epoch always comes from logical worker ``k % W``. A batch records its logical worker
and how many raw stream items that worker had consumed. ``state_dict`` keeps the batch count and
the consumed count per logical worker; on restore, physical worker p serves logical worker
``(p + k) % W`` (so the cycle restarts at the right one) and skips its consumed items without
decoding them (reading bytes only), then continues: the batches are bitwise equal to the
uninterrupted run's.

Bad data. A sample that cannot be used (see :data:`clipforge.data.decode.REASONS`) is skipped
and reported by key; a shard that breaks off is a shard error, the samples before the break are
kept and the count file's remainder is ``lost`` (:mod:`clipforge.data.report`). When skipped +
lost exceed ``error_budget`` of the samples the epoch reads (a worker checks this per item against
its rank's whole epoch, so the check never fires early), iteration raises
:class:`~clipforge.data.report.ErrorBudgetExceeded` naming the worst shard so far. The JSON report
(``report`` path; one file per rank) is written at the end of every epoch and on any stop, and
whenever :meth:`ShardLoader.write_report` is called (the trainer does at every checkpoint).

Transforms: ``transform(image)`` (eval) or ``transform(image, rng)`` (train; ``rng`` a
``numpy.random.Generator``), told apart by a parameter named ``rng`` (or ``generator``). The tokenizer is any callable
``tokenizer(list[str]) -> LongTensor [N, L]``; captions are tokenized per batch, in the worker.
"""

from __future__ import annotations

import functools
import inspect
import multiprocessing as mp
import os
import sys
import warnings
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipforge.data.class_captions import caption_from_label, caption_rng, load_class_captions
from clipforge.data.decode import CAPTION_EXTS, IMAGE_EXTS, BadSample, DecodeConfig, decode_caption, decode_image, pick
from clipforge.data.report import DataReport, ErrorBudgetExceeded
from clipforge.data.sharding import EpochPlan, plan_epoch, slot_events
from clipforge.data.sources import RawSample, ShardFailure, ShardRef, list_shards, load_bytes

Transform = Callable[..., torch.Tensor]
Tokenizer = Callable[[list[str]], torch.Tensor]


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how to batch it.

    Data order: the shards are split over ``world_size x max(1, workers)`` slots, each reading
    its own seeded stream, so the order in which samples arrive (hence each step's batch) depends
    on the number of ranks and of data workers. A given configuration always gives the same
    order, in every run and after every resume; another number of ranks or workers gives another.

    shards: spec (brace-expanded, ``::``-joined) or list of URLs; a .csv/.tsv; or a folder.
    source: ``auto`` | ``wds`` | ``csv`` | ``folder``.
    workers: DataLoader worker processes per rank (0: load in the main process).
    worker_nice: niceness the workers add to their own (0-19, Unix). With as many compute threads as
        cores (a CPU run), a worker at normal priority pre-empts a compute thread and the other one
        waits at the next barrier; a nicer worker runs in those waits instead. The batches are the same.
    epoch_size: samples per epoch over all ranks (default: the shards' counts).
    resampled: draw shards with replacement (needs epoch_size or counts).
    error_budget: fraction of bad samples above which the run stops.
    report: JSON report path (``.rank{r}`` inserted before the suffix when world_size > 1); the
        trainer's default is ``<run.out>/data_report.json``.
    classnames / class_templates: captions for ``.cls`` samples without one (default: classnames.txt
        and its templates file beside the shards; :mod:`clipforge.data.class_captions`).
    """

    shards: str | tuple[str, ...] | list[str] = ""
    source: str = "auto"
    batch_size: int = 64
    workers: int = 2
    worker_nice: int = 0
    seed: int = 0
    epoch_size: int | None = None
    resampled: bool = False
    shuffle_buffer: int = 1000
    error_budget: float = 0.01
    report: str | None = None
    decode: DecodeConfig = DecodeConfig()
    csv_columns: tuple[str, str] | None = None
    classnames: str | None = None
    class_templates: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.worker_nice <= 19:
            raise ValueError(f"data.worker_nice must be in 0-19, got {self.worker_nice}")


def _lower_priority(nice: int, worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: raise this worker's niceness by ``nice`` (where the OS has it)."""
    if nice and hasattr(os, "nice"):
        os.nice(nice)


@dataclass
class Batch:
    """images FloatTensor [B,3,S,S], tokens LongTensor [B,L], keys (``shard/key``) of length B.

    ``worker`` (logical worker id), ``consumed`` (raw items that worker has read) and ``report``
    (bad samples met while building this batch) are bookkeeping for the loader's state and report.
    """

    images: torch.Tensor
    tokens: torch.Tensor
    keys: list[str]
    worker: int = 0
    consumed: int = 0
    report: DataReport = field(default_factory=DataReport)
    error: str | None = None  # set (tensors None) when a worker stops on the error budget

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.images, self.tokens))

    def pin_memory(self) -> Batch:
        if self.images is not None:
            self.images, self.tokens = self.images.pin_memory(), self.tokens.pin_memory()
        return self


def _worker_context() -> str | None:
    """fork where available: workers start in milliseconds and inherit the transform and tokenizer
    (nothing to pickle). Elsewhere the platform default (they must then be picklable)."""
    return "fork" if "fork" in mp.get_all_start_methods() else None


def _takes_rng(transform: Transform) -> bool:
    """A train transform names its generator parameter ``rng`` (or ``generator``)."""
    try:
        params = inspect.signature(transform).parameters
    except (TypeError, ValueError):
        return False
    return "rng" in params or "generator" in params


def sample_rng(seed: int, epoch: int, shard: str, key: str, pass_index: int) -> np.random.Generator:
    """The augmentation RNG of one sample: a function of its identity, not of worker state."""
    return np.random.default_rng([seed, epoch, zlib.crc32(f"{shard}/{key}".encode()), pass_index])


@dataclass
class _Start:
    """Where each logical worker starts: batches already delivered and raw items consumed."""

    plan: EpochPlan
    rotation: int
    done: list[int]
    consumed: list[int]


class _Cursor:
    """A logical worker's position in its event stream, and its guards against endless bad data."""

    def __init__(self, events: Iterator, consumed: int) -> None:
        self.events, self.consumed = events, consumed
        for _ in range(consumed):  # resume: skip without decoding anything
            next(events)
        self.misses = 0  # consecutive items that gave no sample
        self.total = DataReport()  # delivered batches' reports since this worker started

    def next(self) -> tuple[RawSample | ShardFailure, int]:
        self.consumed += 1
        return next(self.events)

    def miss(self, pending: DataReport, budget: float, expected: int, patience: int, last_error: str) -> str | None:
        """Count a failed item; an error message when this worker must stop.

        The budget check is sound: errors this worker alone has met already exceed the budget of
        its rank's whole epoch. It runs per item so that a run of bad data cannot stall a batch.
        """
        self.misses += 1
        if self.total.errors + pending.errors > budget * expected:
            seen = DataReport()
            seen.merge(self.total)
            seen.merge(pending)
            try:
                seen.check_budget(budget, expected)
            except ErrorBudgetExceeded as exc:
                return str(exc)
        if self.misses > patience:  # e.g. resampling data that is all bad, with no error budget
            raise RuntimeError(f"{self.misses} items in a row gave no sample; last error: {last_error}")
        return None


class _SlotDataset(IterableDataset):
    """Worker side: one logical worker's batches for the configured epoch."""

    def __init__(self, shards: list[ShardRef], config: DataConfig, transform: Transform,
                 tokenizer: Tokenizer, rank: int, workers: int) -> None:
        self.shards, self.config, self.rank, self.workers = shards, config, rank, workers
        self.transform, self.tokenizer = transform, tokenizer
        size = getattr(transform, "image_size", None)
        self.decode = config.decode
        if self.decode.image_size is None and isinstance(size, int):
            self.decode = replace(self.decode, image_size=size)  # enables draft decoding of big JPEGs
        self.with_rng = _takes_rng(transform)
        self.class_captions = load_class_captions(config.classnames, config.class_templates, [s.url for s in shards])
        self.start: _Start | None = None
        self.last_error = ""

    def __iter__(self) -> Iterator[Batch]:
        assert self.start is not None, "configure the epoch first"
        info = get_worker_info()
        logical = ((info.id if info else 0) + self.start.rotation) % self.workers
        yield from self._batches(logical)

    def _batches(self, logical: int) -> Iterator[Batch]:
        start, cfg = self.start, self.config
        slot = self.rank * self.workers + logical
        cursor = _Cursor(slot_events(self.shards, start.plan, slot, cfg.seed, cfg.shuffle_buffer),
                         start.consumed[logical])
        expected = start.plan.expected_for_rank(self.rank, self.workers)
        patience = max(10_000, 2 * sum(s.count or 0 for s in self.shards))
        for _ in range(start.done[logical], start.plan.batches_per_slot):
            delta, images, captions, keys = DataReport(), [], [], []
            while len(images) < cfg.batch_size:
                item, pass_index = cursor.next()
                sample = self._process(item, pass_index, delta if pass_index == 0 else None)
                if sample is None:
                    error = cursor.miss(delta, cfg.error_budget, expected, patience, self.last_error)
                    if error:  # stop now: the main process raises it after merging this report
                        yield Batch(None, None, [], logical, cursor.consumed, delta, error)
                        return
                    continue
                cursor.misses = 0
                images.append(sample[0])
                captions.append(sample[1])
                keys.append(f"{item.shard}/{item.key}")
                delta.seen += pass_index == 0
                delta.padded += pass_index != 0
            cursor.total.merge(delta)
            yield Batch(torch.stack(images), self.tokenizer(captions), keys, logical, cursor.consumed, delta)

    def _process(self, item: RawSample | ShardFailure, pass_index: int,
                 report: DataReport | None) -> tuple[torch.Tensor, str] | None:
        """Decode one item; bad ones are recorded in ``report`` (first pass only) and dropped."""
        if isinstance(item, ShardFailure):
            if report is not None:
                report.add_failure(item)
            return None
        try:
            return self._decode(item, pass_index)
        except BadSample as bad:
            self.last_error = f"{bad} ({item.shard}/{item.key})"
            if report is not None:
                report.add_bad(item.shard, item.key, bad.reason, bad.detail)
            return None

    def _decode(self, item: RawSample, pass_index: int) -> tuple[torch.Tensor, str]:
        if item.flaw:
            raise BadSample(item.flaw)
        _, image_value = pick(item.files, IMAGE_EXTS)
        if image_value is None:
            raise BadSample("missing_image")
        caption = self._caption(item, pass_index)  # cheap checks first
        data = load_bytes(image_value)
        if data is None:
            raise BadSample("missing_image", "file not found")
        image = decode_image(data, self.decode)
        try:
            if self.with_rng:
                rng = sample_rng(self.config.seed, self.start.plan.epoch, item.shard, item.key, pass_index)
                return self.transform(image, rng), caption
            return self.transform(image), caption
        except Exception as exc:  # a transform failing on one odd image must not stop the run
            raise BadSample("transform_error", f"{type(exc).__name__}: {exc}") from None

    def _caption(self, item: RawSample, pass_index: int) -> str:
        """The sample's caption, or one made from its ``.cls`` label (:mod:`clipforge.data.class_captions`)."""
        value = pick(item.files, CAPTION_EXTS)[1]
        if value is not None or "cls" not in item.files:
            return decode_caption(load_bytes(value))
        rng = caption_rng(self.config.seed, self.start.plan.epoch, item.shard, item.key, pass_index)
        return caption_from_label(self.class_captions, load_bytes(item.files["cls"]), rng)


class ShardLoader:
    """Main-process side: epochs, DataLoader, rank-equal batch counts, exact state, report."""

    def __init__(self, config: DataConfig, transform: Transform, tokenizer: Tokenizer,
                 rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.config, self.rank, self.world_size = config, rank, world_size
        self.workers = max(1, config.workers)  # logical workers per rank
        self.shards = list_shards(config.shards, config.source, csv_columns=config.csv_columns)
        slots = world_size * self.workers
        if len(self.shards) < slots and not config.resampled:
            warnings.warn(f"{len(self.shards)} shards for {slots} ranks x workers: {slots - len(self.shards)} "
                          "of them deliver only padding; write more, smaller shards", stacklevel=3)
        self.dataset = _SlotDataset(self.shards, config, transform, tokenizer, rank, self.workers)
        self._plans: dict[int, EpochPlan] = {}
        self._reset(0)

    def _reset(self, epoch: int) -> None:
        """Position at the start of ``epoch``: batches delivered, raw items consumed per worker."""
        self.epoch, self._batches, self._consumed = epoch, 0, [0] * self.workers
        self.report = DataReport(epoch=epoch)
        self._restored = False

    # -- epochs and sizes -------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch to iterate next (a restored position in that epoch is kept)."""
        if epoch != self.epoch:
            self._reset(epoch)

    def plan(self, epoch: int | None = None) -> EpochPlan:
        epoch = self.epoch if epoch is None else epoch
        if epoch not in self._plans:
            cfg = self.config
            self._plans = {epoch: plan_epoch(
                self.shards, num_slots=self.world_size * self.workers, batch_size=cfg.batch_size,
                seed=cfg.seed, epoch=epoch, epoch_size=cfg.epoch_size, resampled=cfg.resampled)}
        return self._plans[epoch]

    @property
    def num_batches(self) -> int:
        """Batches per epoch on this rank; the same on every rank."""
        return self.plan().batches_per_slot * self.workers

    def __len__(self) -> int:
        return self.num_batches

    # -- iteration ------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        """Batches from the current position to the end of the epoch.

        An epoch that finished here restarts when iterated again; a position restored by
        ``load_state_dict`` is kept exactly, even at the end of its epoch (then nothing is yielded).
        """
        plan = self.plan()
        if self._batches >= self.num_batches and not self._restored:
            self._reset(self.epoch)
        self._restored = False
        k, w = self._batches, self.workers
        self.dataset.start = _Start(plan, k % w, [k // w + (l < k % w) for l in range(w)], list(self._consumed))
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.config.workers,
                            pin_memory=torch.cuda.is_available(), persistent_workers=False,
                            multiprocessing_context=_worker_context() if self.config.workers else None,
                            worker_init_fn=functools.partial(_lower_priority, self.config.worker_nice))
        expected = plan.expected_for_rank(self.rank, w)
        try:
            for batch in loader:
                if batch.worker != self._batches % w:  # the round-robin contract; never expected to fail
                    raise RuntimeError(f"batch from worker {batch.worker}, expected {self._batches % w}")
                self.report.merge(batch.report)
                if batch.error:
                    raise ErrorBudgetExceeded(batch.error)
                self._batches += 1
                self._consumed[batch.worker] = batch.consumed
                self.report.check_budget(self.config.error_budget, expected)
                yield batch
            self.report.check_budget(self.config.error_budget, None)
        finally:
            # Also when stopped by the budget, a worker error or the caller; not from a generator the
            # interpreter collects as it exits (its modules are half torn down; the trainer has written
            # the report at its last checkpoint and when it stopped).
            if not sys.is_finalizing():
                self.write_report()

    def report_path(self) -> Path | None:
        if not self.config.report:
            return None
        path = Path(self.config.report)
        return path.with_name(f"{path.stem}.rank{self.rank}{path.suffix}") if self.world_size > 1 else path

    def write_report(self) -> Path | None:
        """Write this rank's report of the epoch so far (atomically); returns the path, if configured."""
        path = self.report_path()
        if path is not None:
            self.report.write(path)
        return path

    # -- state ----------------------------------------------------------------------------

    def _fingerprint(self) -> dict:
        c = self.config
        return {"seed": c.seed, "batch_size": c.batch_size, "workers": self.workers, "rank": self.rank,
                "world_size": self.world_size, "shards": [s.name for s in self.shards],
                "resampled": c.resampled, "epoch_size": c.epoch_size, "shuffle_buffer": c.shuffle_buffer}

    def state_dict(self) -> dict:
        """The exact position: epoch, batches delivered, raw items consumed per logical worker."""
        return {"epoch": self.epoch, "batches": self._batches, "consumed": list(self._consumed),
                "report": self.report.to_dict(), "fingerprint": self._fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a position; the next iteration continues epoch ``state['epoch']`` exactly."""
        mine = self._fingerprint()
        diff = {k: (v, mine.get(k)) for k, v in state["fingerprint"].items() if mine.get(k) != v}
        if diff:
            raise ValueError(f"loader state does not match this configuration: {diff}")
        self._reset(state["epoch"])
        self._batches, self._consumed = state["batches"], list(state["consumed"])
        self.report = DataReport.from_dict(state["report"])
        self._restored = True


def build_loader(config: DataConfig, transform: Transform, tokenizer: Tokenizer,
                 rank: int = 0, world_size: int = 1) -> ShardLoader:
    """The loader for ``rank`` of ``world_size``: iterate it once per epoch after ``set_epoch``."""
    return ShardLoader(config, transform, tokenizer, rank, world_size)
