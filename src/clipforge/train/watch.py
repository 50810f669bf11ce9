"""Which rank, step and collective: what a distributed run says when a rank stalls or dies.

Every rank keeps its position in memory (the step, and what it is doing: "loading data",
"all-gather of features", "checkpoint barrier" ...); a daemon thread publishes it to the job's
store every ``interval`` seconds with the wall-clock time. When a collective fails (its timeout
passed, or a peer's connection broke), :func:`region` reads every rank's last heartbeat and raises
:class:`CollectiveError` naming this rank, the step, the collective and the ranks that stopped
responding or are elsewhere. The thread is the last resort: a rank still inside one collective call
``margin`` seconds past its timeout (:func:`waiting`; a collective that never returns) prints the
same and exits.

A single process has no watch; every function here is then a no-op.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Iterator

import torch
import torch.distributed as dist

EXIT_STALLED = 3  # exit status of a rank the last-resort thread stops
MAX_NAMED = 32  # culprits a report names one by one
_KEY = "clipforge_heartbeat/{}"
_WATCH: "Watch | None" = None
_COMMUNICATION_WORDS = ("gloo", "nccl", "timed out", "timeout", "connection", "closed", "peer", "socket")


class CollectiveError(RuntimeError):
    """A collective failed or timed out; the message names the rank, step, collective and the culprits."""


class Watch:
    """This rank's position, its heartbeat thread and the failure report (see the module doc)."""

    def __init__(self, store: Any, rank: int, world_size: int, timeout_s: float):
        self.store, self.rank, self.world_size = store, rank, world_size
        self.timeout_s = timeout_s
        self.interval = _interval(timeout_s)
        self.step, self.what = 0, "starting"
        self.since: float | None = None  # when the collective now waited in began (monotonic)
        self.deadline: float | None = None  # ... and by when it must have ended
        self.reported = threading.Lock()  # taken by whoever reports a failure first
        self.stopped, self.wake = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._beat, name="clipforge-heartbeat", daemon=True)
        self.thread.start()

    # ---- the heartbeat thread ----------------------------------------------------------------

    def _beat(self) -> None:
        while not self.stopped.is_set():
            try:
                self.store.set(_KEY.format(self.rank), json.dumps(
                    {"step": self.step, "what": self.what, "time": time.time()}))
            except Exception:  # the store is gone (the launcher stopped the job): nobody to tell
                return
            deadline = self.deadline
            if deadline is not None and time.monotonic() > deadline + self.margin:
                self._give_up()
            self.wake.wait(self.interval)
            self.wake.clear()

    def stop(self) -> None:
        """End the thread (before the store goes away: a thread inside it at exit aborts the process)."""
        self.stopped.set()
        self.wake.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=10)

    @property
    def margin(self) -> float:
        return max(3.0, 0.1 * self.timeout_s)

    def _give_up(self) -> None:
        """A collective outlived its timeout (it never returned): report and end this process."""
        if self.reported.acquire(blocking=False):
            print(self.report(f"still waiting {self.margin:.0f} s after its {self.timeout_s:g} s timeout"),
                  file=sys.stderr, flush=True)
            os._exit(EXIT_STALLED)

    # ---- the report ------------------------------------------------------------------------------

    def peers(self) -> dict[int, dict | None]:
        """Every other rank's last heartbeat (None: none published, or the store cannot be read)."""
        beats: dict[int, dict | None] = {}
        for other in range(self.world_size):
            if other == self.rank:
                continue
            try:
                key = _KEY.format(other)
                beats[other] = json.loads(self.store.get(key)) if self.store.check([key]) else None
            except Exception:
                beats[other] = None
        return beats

    def report(self, reason: str) -> str:
        """One line naming this rank's position, the failure and the culprits, then one line per
        culprit (the ranks not responding, or elsewhere than this one) and a count of the others.

        A rank is not responding when its heartbeat is older than three intervals, or did not
        move during one and a half intervals (a rank killed a moment ago still has a fresh one).
        """
        first = self.peers()
        if any(beat is not None and time.time() - beat["time"] <= 3 * self.interval for beat in first.values()):
            time.sleep(1.5 * self.interval)
        lines, culprits, now = [], [], time.time()
        for other, beat in self.peers().items():
            if beat is None:
                culprits.append(other)
                lines.append(f"  rank {other}: no heartbeat in the store")
                continue
            silent, before = now - beat["time"], first.get(other)
            stopped = silent > 3 * self.interval or (before is not None and before["time"] == beat["time"])
            if stopped or (beat["step"], beat["what"]) != (self.step, self.what):
                culprits.append(other)
                state = f"not responding for {silent:.1f} s" if stopped else "alive"
                lines.append(f"  rank {other}: {state}, last at step {beat['step']}: {beat['what']}")
        shown = lines[:MAX_NAMED]
        if len(lines) > len(shown):
            shown.append(f"  ... and {len(lines) - len(shown)} more")
        others = self.world_size - 1 - len(culprits)
        if others:
            shown.append(f"  {others} other rank(s) alive in the same place")
        blame = f"; stalled or lost: rank(s) {', '.join(map(str, culprits[:MAX_NAMED]))}" if culprits else ""
        return "\n".join([f"rank {self.rank}: step {self.step}: {self.what}: {reason}{blame}", *shown])


def start(store: Any, rank: int, world_size: int, timeout_s: float) -> Watch:
    """Start this process's watch (called once the process group exists)."""
    global _WATCH
    stop()
    _WATCH = Watch(store, rank, world_size, timeout_s)
    atexit.register(stop)
    return _WATCH


def stop() -> None:
    """Stop this process's watch, if any (at exit, and before the process group is destroyed)."""
    global _WATCH
    if _WATCH is not None:
        _WATCH.stop()
        _WATCH = None


def set_timeout(seconds: float) -> None:
    """The timeout of the collective calls that start from now on (the heartbeat keeps pace with it)."""
    if _WATCH is not None:
        _WATCH.timeout_s = seconds
        _WATCH.interval = _interval(seconds)
        _WATCH.wake.set()  # publish now, and from now on at the new pace


def _interval(timeout_s: float) -> float:
    return min(5.0, max(0.2, timeout_s / 10))


def at(step: int, what: str) -> None:
    """Record this rank's position (cheap: two attribute writes, published by the thread)."""
    if _WATCH is not None:
        _WATCH.step, _WATCH.what = step, what


def doing(what: str) -> None:
    if _WATCH is not None and not _compiling():
        _WATCH.what = what


def _compiling() -> bool:
    """True while torch.compile traces: the watch stays out of compiled graphs (its state is Python's)."""
    return torch.compiler.is_compiling()


def label_forward(outer: Any, inner: Any) -> None:
    """Name the collectives torch's wrapper runs in forward: DDP broadcasts BatchNorm buffers
    before the model's own forward, FSDP2 all-gathers each block's parameters during it."""
    if outer is inner:  # FSDP2 shards in place
        inner.register_forward_pre_hook(lambda *_: doing("forward: FSDP's parameter all-gathers"))
        return
    outer.register_forward_pre_hook(lambda *_: doing("start of forward: DDP's broadcast of buffers"))
    inner.register_forward_pre_hook(lambda *_: doing("forward"))


def waiting(what: str | None = None) -> AbstractContextManager:
    """Inside one collective call: names it (``what``, or keeps the current name) and arms the
    last-resort deadline (the current timeout). The previous name returns after it, not after a
    failure (the report names where it failed)."""
    return nullcontext() if _WATCH is None or _compiling() else _waiting(_WATCH, what)


@contextmanager
def _waiting(watch: Watch, what: str | None) -> Iterator[None]:
    previous = watch.what, watch.since, watch.deadline
    watch.what = what or watch.what
    watch.since = time.monotonic()
    watch.deadline = watch.since + watch.timeout_s
    try:
        yield
    finally:
        watch.since, watch.deadline = previous[1:]
    watch.what = previous[0]


def _is_communication_error(err: RuntimeError) -> bool:
    """torch.distributed's own errors, and the plain RuntimeErrors gloo and DDP's reducer raise."""
    if isinstance(err, dist.DistError):
        return True
    return type(err) is RuntimeError and any(word in str(err).lower() for word in _COMMUNICATION_WORDS)


@contextmanager
def region(step: int, what: str) -> Iterator[None]:
    """Collectives whose failure is reported: a communication error inside becomes :class:`CollectiveError`
    naming the rank, the step, what it waited in and the other ranks' last positions. Other errors
    (clipforge's own, out of memory, a bug) pass through unchanged."""
    watch = _WATCH
    if watch is None:
        yield
        return
    at(step, what)
    began = time.monotonic()
    try:
        yield
    except RuntimeError as err:
        if not _is_communication_error(err):
            raise
        if not watch.reported.acquire(blocking=False):  # the thread is reporting and exiting
            time.sleep(60)
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        spent = time.monotonic() - (watch.since or began)
        reason = f"failed after {spent:.1f} s (timeout {watch.timeout_s:g} s): {first}"
        raise CollectiveError(watch.report(reason)) from err
