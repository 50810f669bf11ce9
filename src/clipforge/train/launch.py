"""Several training processes on this machine without torchrun: ``run.processes``.

On a small CPU, N data-parallel processes of one thread each train a small model faster than one
process of N threads: each process's operators run on one core without the threads' barriers, and
the gradient all-reduce of a small model is cheap (the demo: 540-585 samples/s against 454-488 on 2
cores, ``benchmarks/results/demo_recipe_2026-12-02.md``). The count is part of a recipe, like
``run.threads``: it sets the data order and the float rounding.

clipforge starts the processes through PyTorch's elastic launcher, the engine behind torchrun, on
loopback with no restarts (``torchrun --standalone --nproc-per-node N`` in one call); every process
runs the one trainer and rank 0's summary comes back. Under torchrun the processes are torchrun's,
and ``run.processes`` must then be 1 or the world size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import traceback
import uuid
from typing import Any


class LaunchError(RuntimeError):
    """A launched training process failed (its own error went to stderr first); ``exit_code`` is
    the command's: 2 when every failed process refused its input (a checkpoint it cannot resume)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ProcessesError(ValueError):
    """``run.processes`` disagrees with the processes torchrun started."""


def launches(config: Any) -> bool:
    """Whether this call starts the processes (``run.processes`` > 1, not already under torchrun).

    Under torchrun a ``run.processes`` other than 1 and the world size is refused, naming both.
    """
    processes, world = config.run.processes, os.environ.get("WORLD_SIZE")
    if world is None:
        return processes > 1
    if processes not in (1, int(world)):
        raise ProcessesError(f"run.processes = {processes}, but torchrun started {world} processes: "
                             f"set run.processes = {world} (or 1), or start {processes} with torchrun")
    return False


def launch(config: Any, stop_at: int | None = None) -> dict[str, Any]:
    """Train with ``config.run.processes`` local processes; rank 0's summary (``Trainer.train``)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    processes = config.run.processes
    # torchrun --standalone: a c10d rendezvous on a free loopback port, a fresh run id.
    launch_config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=str(uuid.uuid4()),
                                 rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0,
                                 monitor_interval=0.1, start_method="spawn")
    try:
        with _quiet_agent(), _restored(launch_config.signals_to_handle):
            results = elastic_launch(launch_config, _train_rank)(config, stop_at)
    except ChildFailedError as err:
        codes = {rank: failure.exitcode for rank, failure in err.failures.items()}
        failed = ", ".join(f"rank {rank} (exit code {code})" for rank, code in sorted(codes.items()))
        raise LaunchError(f"training in {processes} processes failed: {failed}; the error is printed above",
                          2 if set(codes.values()) == {2} else 1) from None
    return results[0]


@contextlib.contextmanager
def _restored(signals: str):
    """This process's signal handlers (and environment) as they were before the launch.

    The agent installs handlers that turn SIGTERM and the like into an exception, and leaves them:
    a process forked later (a multiprocessing pool) would inherit them, and a pool terminating its
    workers with SIGTERM then hangs on a worker that raised at exit instead of dying.
    """
    numbers = [getattr(signal, name) for name in signals.split(",") if hasattr(signal, name)]
    handlers = {number: signal.getsignal(number) for number in numbers}
    environment = dict(os.environ)
    try:
        yield
    finally:
        for number, handler in handlers.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        for key in set(os.environ) - set(environment):
            del os.environ[key]
        os.environ.update(environment)


@contextlib.contextmanager
def _quiet_agent():
    """Each process says what went wrong itself, once: the elastic agent's own log (start-up notes,
    a failed process's exit logged at length, the others' termination) off."""
    loggers = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _train_rank(config: Any, stop_at: int | None) -> dict[str, Any]:
    """One launched process: the trainer, as under torchrun (its environment names the rank); a
    refused resume or a failed collective exits with :func:`train_here`'s code."""
    try:
        result = train_here(config, stop_at)
    except Exception:  # the launcher would only log it: the traceback, from the process itself
        traceback.print_exc()
        sys.stderr.flush()
        raise SystemExit(1) from None
    if isinstance(result, int):
        raise SystemExit(result)
    return result


def train_here(config: Any, stop_at: int | None = None) -> dict[str, Any] | int:
    """This process's part of the run (the only one, or one of several): rank 0's summary, or an exit
    code: 2 on a refused resume (every rank refuses alike; rank 0 says why), 1 on a failed collective
    (each rank says where it was and which ranks it waited for)."""
    from clipforge.train.distributed import destroy_distributed
    from clipforge.train.loop import Trainer
    from clipforge.train.state import ResumeError
    from clipforge.train.watch import CollectiveError

    try:
        return Trainer(config).train(stop_at=stop_at)
    except ResumeError as err:
        if os.environ.get("RANK", "0") == "0":
            print(f"clipforge train: error: {err}", file=sys.stderr, flush=True)
        return 2
    except CollectiveError as err:
        print(f"clipforge train: error: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        destroy_distributed()
