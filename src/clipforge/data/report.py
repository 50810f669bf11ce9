"""The bad-data report: what was skipped, where and why, and the error budget.

JSON layout (stable; the training and evaluation issues read it)::

    {
      "epoch": 0,              # the epoch counted (set by the training loader; null elsewhere)
      "seen": 9990,            # samples delivered to training (first pass; padding excluded)
      "skipped": 8,            # bad samples skipped; seen + skipped = samples read
      "lost": 2,               # samples a broken shard's count file promised but could not be read
      "padded": 22,            # repeats added so every rank and worker yields the same batch count
      "by_reason": {"corrupt_image": 3, ...},
      "skipped_by_shard": {"00003.tar": 5, ...},
      "samples": [{"shard": "00003.tar", "key": "000030017", "reason": "too_large", "detail": "..."}],
      "shard_errors": [{"shard": "00006.tar", "error": "ReadError: ...", "samples_read": 40,
                        "expected": 42}]
    }

Workers send small report deltas with their batches; the main process merges them, so the
report needs no files shared between processes and restores exactly from a loader state_dict.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from clipforge.data.sources import ShardFailure
from clipforge.paths import atomic_write

MAX_LISTED = 10_000  # samples listed by key; counts stay exact beyond this
MAX_SHARDS_NAMED = 20  # shards the error-budget message lists by count (worst first)


class ErrorBudgetExceeded(RuntimeError):
    """Too many bad samples: the run stops, naming the worst shard so far and each shard's count."""


@dataclass
class DataReport:
    """Counts and listings of delivered, skipped, lost and padded samples (see module doc)."""

    seen: int = 0
    skipped: int = 0
    epoch: int | None = None
    lost: int = 0
    padded: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    skipped_by_shard: dict[str, int] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    shard_errors: list[dict] = field(default_factory=list)

    def add_bad(self, shard: str, key: str, reason: str, detail: str = "") -> None:
        self.skipped += 1
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        self.skipped_by_shard[shard] = self.skipped_by_shard.get(shard, 0) + 1
        if len(self.samples) < MAX_LISTED:
            self.samples.append({"shard": shard, "key": key, "reason": reason, "detail": detail[:200]})

    def add_failure(self, failure: ShardFailure) -> None:
        self.shard_errors.append(asdict(failure))
        if failure.expected is not None:
            self.lost += max(0, failure.expected - failure.samples_read)

    def merge(self, other: DataReport) -> None:
        self.seen += other.seen
        self.skipped += other.skipped
        self.lost += other.lost
        self.padded += other.padded
        for reason, n in other.by_reason.items():
            self.by_reason[reason] = self.by_reason.get(reason, 0) + n
        for shard, n in other.skipped_by_shard.items():
            self.skipped_by_shard[shard] = self.skipped_by_shard.get(shard, 0) + n
        self.samples.extend(other.samples[: max(0, MAX_LISTED - len(self.samples))])
        self.shard_errors.extend(other.shard_errors)

    @property
    def errors(self) -> int:
        return self.skipped + self.lost

    def errors_by_shard(self) -> dict[str, int]:
        """skipped + lost per shard, for the shards that had any."""
        per = dict(self.skipped_by_shard)
        for err in self.shard_errors:
            lost = max(0, (err["expected"] or 0) - err["samples_read"])
            per[err["shard"]] = per.get(err["shard"], 0) + lost
        return {shard: n for shard, n in per.items() if n}

    def worst_shard(self) -> tuple[str, int] | None:
        """(shard, skipped + lost) of the shard with the most errors."""
        per = self.errors_by_shard()
        return max(per.items(), key=lambda kv: (kv[1], kv[0])) if per else None

    def check_budget(self, budget: float, expected: int | None = None) -> None:
        """Raise :class:`ErrorBudgetExceeded` when errors exceed ``budget`` of the samples.

        ``expected`` is the number of samples the epoch will read: with it the check fires as soon
        as the whole epoch's budget is spent (it can never fire early, whatever the order). The
        message can only speak of the samples read so far (this rank, up to the stop).
        """
        total = max(expected or 0, self.seen + self.errors)
        if self.errors > budget * total:
            per = sorted(self.errors_by_shard().items(), key=lambda kv: (-kv[1], kv[0]))
            listed = ", ".join(f"{shard}={n}" for shard, n in per[:MAX_SHARDS_NAMED])
            more = f" and {len(per) - MAX_SHARDS_NAMED} more shards" if len(per) > MAX_SHARDS_NAMED else ""
            worst = f"{per[0][0]} ({per[0][1]} errors)" if per else "?"
            reasons = ", ".join(f"{r}={n}" for r, n in sorted(self.by_reason.items()))
            raise ErrorBudgetExceeded(
                f"{self.errors} bad samples out of {total} exceed the error budget of {budget:.2%}; "
                f"worst shard so far: {worst}; errors per shard so far: {listed or 'none'}{more}; "
                f"reasons: {reasons or 'shard errors'}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DataReport:
        return cls(**{k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
                      for k, v in data.items()})

    def write(self, path: str | os.PathLike) -> None:
        """Write the JSON report atomically (a reader never sees half a file)."""
        atomic_write(path, json.dumps(self.to_dict(), indent=1))


def merge_reports(reports: list[dict | DataReport]) -> DataReport:
    """Merge per-rank reports (dicts as read from JSON, or DataReport objects) into one."""
    total = DataReport()
    for rep in reports:
        total.merge(rep if isinstance(rep, DataReport) else DataReport.from_dict(rep))
    return total
