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


_CURRENT_TEST = ["(collection)"]


def pytest_runtest_setup(item):
    _CURRENT_TEST[0] = item.nodeid


@pytest.fixture(autouse=True, scope="session")
def _fast_tier_starts_no_processes():
    """``make test-fast`` (CLIPFORGE_TEST_TIER=fast, ``-m "not slow"``) runs in one process: a test that
    starts a subprocess or a worker process there (in its body or a fixture of any scope) fails,
    naming itself, so that it gets its ``slow`` mark."""
    import os

    if os.environ.get("CLIPFORGE_TEST_TIER") != "fast":
        yield
        return
    import multiprocessing.process
    import subprocess

    def refuse(*args, **kwargs):
        raise RuntimeError(f"{_CURRENT_TEST[0]} starts a process: mark it @pytest.mark.slow "
                           "(the fast tier, make test-fast, runs in one process)")

    patch = pytest.MonkeyPatch()
    patch.setattr(subprocess.Popen, "__init__", refuse)
    patch.setattr(multiprocessing.process.BaseProcess, "start", refuse)
    yield
    patch.undo()


def pytest_collection_modifyitems(config, items):
    """A browser test starts Chromium: it belongs to the slow tier."""
    for item in items:
        if item.get_closest_marker("browser") is not None:
            item.add_marker(pytest.mark.slow)
