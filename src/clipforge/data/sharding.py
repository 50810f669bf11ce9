"""Splitting shards across ranks x workers, and each slot's deterministic stream of raw samples.

Slots. A run has ``world_size * W`` slots, ``W = max(1, workers)``; slot ``rank * W + w`` is
logical worker ``w`` of ``rank``. Everything random is seeded from (seed, epoch, slot), never from
process state, so the same slot yields the same stream in any process (the resume contract).

Exact mode (default). Shards are permuted by (seed, epoch), then given to slots largest first, each
to the least loaded slot (LPT), so slot loads differ by at most about one shard. Every slot then
yields the same number of batches, ``ceil(max slot load / batch_size)`` (or
``ceil(epoch_size / (slots * batch_size))`` when an epoch size is given): a slot that runs out of
its own samples (smaller load, bad samples, broken shard) fills its remaining batches with
*padding*: repeats drawn from all shards in a seeded order, counted as ``padded`` in the report.
So within an epoch every readable sample is delivered exactly once, plus ``padded`` repeats, and
all ranks yield exactly the same number of batches (DDP never waits on a rank that ran dry).

Resampled mode. Each slot draws shards with replacement (seeded by slot), endlessly; the epoch is
``ceil(epoch_size / (slots * batch_size))`` batches per slot. For data much larger than an epoch.

Within a slot, samples pass through a shuffle buffer seeded by (seed, epoch, slot); shard failures
pass straight through (they are reported, not shuffled).
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from clipforge.data.sources import RawSample, ShardFailure, ShardRef, iter_shard

# Stream tags mixed into seeds so that different uses of one (seed, epoch, slot) never correlate.
_ORDER, _SHUFFLE, _PADDING, _RESAMPLE = 1, 2, 3, 4


@dataclass(frozen=True)
class EpochPlan:
    """Who reads what in one epoch. ``slots[g]`` lists shard indices of global slot g."""

    epoch: int
    slots: tuple[tuple[int, ...], ...]
    batches_per_slot: int
    expected: tuple[int, ...]  # samples each slot will read in its first pass (before padding)
    resampled: bool = False

    def expected_for_rank(self, rank: int, workers: int) -> int:
        return sum(self.expected[rank * workers : (rank + 1) * workers])


def plan_epoch(
    shards: list[ShardRef],
    *,
    num_slots: int,
    batch_size: int,
    seed: int,
    epoch: int,
    epoch_size: int | None = None,
    resampled: bool = False,
) -> EpochPlan:
    """Assign shards to ``num_slots`` slots for ``epoch`` (identical on every rank)."""
    counts = [s.count for s in shards]
    known = all(c is not None for c in counts)
    total = sum(counts) if known else None  # type: ignore[arg-type]
    if epoch_size is None and not known:
        missing = [s.name for s in shards if s.count is None][:3]
        raise ValueError(
            f"sample counts unknown for shards such as {missing}: write a sizes.json beside the "
            "shards (clipforge data check --write-sizes) or pass epoch_size"
        )
    wanted = epoch_size if epoch_size is not None else total
    if not wanted:
        raise ValueError("the data has no samples")
    if resampled:
        per_slot = math.ceil(wanted / (num_slots * batch_size))
        return EpochPlan(epoch, ((),) * num_slots, per_slot, (per_slot * batch_size,) * num_slots, True)
    order = np.random.default_rng([seed, epoch, _ORDER]).permutation(len(shards)).tolist()
    sizes = [c if c is not None else 1 for c in counts]  # unknown sizes: equal weights, round robin
    slots: list[list[int]] = [[] for _ in range(num_slots)]
    heap = [(0, g) for g in range(num_slots)]  # (load, slot): ties go to the lowest slot
    # LPT: largest shard first (stable on the epoch's random order), to the least-loaded slot.
    for idx in sorted(order, key=lambda i: -sizes[i]):
        load, g = heapq.heappop(heap)
        slots[g].append(idx)
        heapq.heappush(heap, (load + sizes[idx], g))
    loads = [sum(sizes[i] for i in lst) for lst in slots]
    position = {idx: pos for pos, idx in enumerate(order)}
    for lst in slots:
        lst.sort(key=position.__getitem__)  # each slot reads its shards in the epoch's random order
    if epoch_size is not None:
        per_slot = math.ceil(epoch_size / (num_slots * batch_size))
    else:
        per_slot = max(1, math.ceil(max(loads) / batch_size))
    expected = tuple(min(load, per_slot * batch_size) for load in loads) if known else (
        (per_slot * batch_size,) * num_slots
    )
    return EpochPlan(epoch, tuple(tuple(s) for s in slots), per_slot, expected)


def shuffled(items: Iterable, rng: np.random.Generator, size: int) -> Iterator:
    """A shuffle buffer of ``size`` RawSamples; anything else passes straight through."""
    buf: list = []
    for item in items:
        if not isinstance(item, RawSample):
            yield item
        elif len(buf) < size:
            buf.append(item)
        else:
            i = int(rng.integers(size))
            yield buf[i]
            buf[i] = item
    order = rng.permutation(len(buf))
    for i in order:
        yield buf[i]


def _read_all(refs: Iterable[ShardRef]) -> Iterator[RawSample | ShardFailure]:
    for ref in refs:
        yield from iter_shard(ref)


def slot_events(
    shards: list[ShardRef], plan: EpochPlan, slot: int, seed: int, buffer: int
) -> Iterator[tuple[RawSample | ShardFailure, int]]:
    """The endless, deterministic stream of (item, pass) of one slot for ``plan.epoch``.

    pass 0 is the slot's own first pass (or the resampled stream); passes >= 1 are padding, each
    a fresh seeded permutation of all shards. The consumer stops after its batch count.
    """
    shuffle_rng = np.random.default_rng([seed, plan.epoch, slot, _SHUFFLE])
    if plan.resampled:
        draw_rng = np.random.default_rng([seed, plan.epoch, slot, _RESAMPLE])
        draws = (shards[int(draw_rng.integers(len(shards)))] for _ in itertools.count())
        for item in shuffled(_read_all(draws), shuffle_rng, buffer):
            yield item, 0
        return
    own = [shards[i] for i in plan.slots[slot]]
    for item in shuffled(_read_all(own), shuffle_rng, buffer):
        yield item, 0
    pad_rng = np.random.default_rng([seed, plan.epoch, slot, _PADDING])
    for pass_index in itertools.count(1):
        perm = pad_rng.permutation(len(shards))
        for item in _read_all(shards[i] for i in perm):
            yield item, pass_index
