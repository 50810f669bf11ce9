"""Shared test fixtures. Reference fixtures are read in place from ../shared/reference."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = (ROOT / ".." / "shared" / "reference").resolve()


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.fail(
            f"reference fixtures not found at {REFERENCE_DIR}: the tests need ../shared/reference "
            "beside the project root (CI provides it)",
            pytrace=False,
        )
    return REFERENCE_DIR


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and the CI machine's two cores are shared."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_processes(request, monkeypatch):
    """``make test-fast`` (CLIPFORGE_TEST_TIER=fast, ``-m "not slow"``) runs in one process: a test that
    starts a subprocess or a worker process there fails, naming itself, so it gets its ``slow`` mark."""
    import os

    if os.environ.get("CLIPFORGE_TEST_TIER") != "fast":
        return
    import multiprocessing.process
    import subprocess

    def refuse(*args, **kwargs):
        raise RuntimeError(f"{request.node.nodeid} starts a process: mark it @pytest.mark.slow "
                           "(the fast tier, make test-fast, runs in one process)")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)
