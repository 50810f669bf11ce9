"""What a run reports: a periodic progress line, metrics as JSON lines, TensorBoard when installed.

``metrics.jsonl`` holds one record per optimizer step (and one per evaluation). Losses are also
stored as ``float.hex`` strings, so two runs can be compared bit for bit.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from clipforge.paths import atomic_write

METRICS_NAME = "metrics.jsonl"


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class MetricsLog:
    """Appends records to ``metrics.jsonl`` (and TensorBoard); a no-op on ranks other than 0.

    A run starts by :meth:`truncate_after` its starting step, so the file never holds a killed
    run's records twice.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled, self.tensorboard = enabled, tensorboard
        self.path = Path(run_dir) / METRICS_NAME
        self._file: TextIO | None = None
        self._tb = None
        self._purge_step: int | None = None

    def _open(self) -> TextIO:
        """Opened on first write (and again after ``close``): a closed log can be written to later."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
            if self.tensorboard and self._tb is None:
                self._tb = _tensorboard_writer(self.path.parent / "tensorboard", self._purge_step)
        return self._file

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (0: all of them): they were written by a run that was killed
        after its last checkpoint, or before its first. The file is rewritten atomically (a kill
        during the rewrite leaves the old file whole), and TensorBoard hides its events past ``step``."""
        if not self.enabled:
            return
        self.close()
        self._purge_step = step + 1
        if not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        keep = [line for line in lines if line.strip() and _step_of(line) <= step]
        if len(keep) != len(lines):
            text = "".join(f"{line}\n" for line in keep)
            atomic_write(self.path, text)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        handle = self._open()
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        if self._tb is not None:
            prefix = record.get("kind", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self._tb.add_scalar(f"{prefix}/{key}", value, record.get("step", 0))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _step_of(line: str) -> float:
    """A record's step; a line cut short by a kill (not JSON) sorts last, so it is dropped."""
    try:
        return json.loads(line).get("step", 0)
    except ValueError:
        return math.inf


def _tensorboard_writer(directory: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    # purge_step: events of a killed run at or past this step are hidden (the run repeats them)
    return SummaryWriter(str(directory), purge_step=purge_step)


def read_metrics(run_dir: str | Path, kind: str = "train") -> list[dict[str, Any]]:
    """The records of one kind ("train" or "eval") from a run's metrics.jsonl."""
    path = Path(run_dir) / METRICS_NAME
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    return [r for r in map(json.loads, filter(str.strip, lines)) if r.get("kind", "train") == kind]


class Progress:
    """A line every ``every`` steps: step, samples/s, loss, learning rate, logit scale, ETA."""

    def __init__(self, total_steps: int, samples_per_step: int, every: int, enabled: bool = True,
                 stream: TextIO = sys.stdout):
        self.total, self.samples_per_step, self.every = total_steps, samples_per_step, max(1, every)
        self.enabled, self.stream = enabled, stream
        self._mark_time, self._mark_step = time.perf_counter(), None

    def start(self, step: int) -> None:
        self._mark_time, self._mark_step = time.perf_counter(), step

    def rate(self, step: int) -> float:
        """Samples per second since the last line."""
        elapsed = time.perf_counter() - self._mark_time
        steps = step - (self._mark_step if self._mark_step is not None else 0)
        return steps * self.samples_per_step / elapsed if elapsed > 0 and steps > 0 else float("nan")

    def update(self, step: int, loss: float, lr: float, logit_scale: float, extra: str = "") -> float | None:
        """Print a line when due (``step`` counts completed steps); returns the samples/s it printed."""
        if step % self.every and step != self.total:
            return None
        rate = self.rate(step)
        eta = (self.total - step) * self.samples_per_step / rate if rate == rate and rate > 0 else float("nan")
        if self.enabled:
            width = len(str(self.total))
            print(f"step {step:>{width}}/{self.total} | {rate:7.1f} samples/s | loss {loss:.4f} | lr {lr:.2e} | "
                  f"logit scale {logit_scale:6.2f}{extra} | ETA {format_duration(eta)}", file=self.stream, flush=True)
        self.start(step)
        return rate
