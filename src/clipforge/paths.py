"""Where clipforge keeps downloaded and derived files, and how it writes a file whole."""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path


def cache_dir() -> Path:
    """``$CLIPFORGE_CACHE``, else ``$XDG_CACHE_HOME/clipforge``, else ``~/.cache/clipforge``.

    Holds OpenAI's checkpoints and vocabulary (downloaded once) and zero-shot heads (``zeroshot/``).
    """
    if os.environ.get("CLIPFORGE_CACHE"):
        return Path(os.environ["CLIPFORGE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "clipforge"


# Test hook, "NAME:SECONDS": pause before renaming a file called NAME into place (a test kills the process there).
WRITE_PAUSE_ENV = "CLIPFORGE_TEST_WRITE_PAUSE"


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (str: UTF-8) to ``path`` whole or not at all.

    The bytes go to a temporary file beside ``path`` (``.<name>.<pid>.tmp``), are fsynced, then
    renamed over ``path``: a process killed at any moment leaves the old file or the new one,
    never an empty or partial file. Temporary files of killed writers of ``path`` are removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        _test_pause(path.name)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    return path


def _test_pause(name: str) -> None:
    target, _, seconds = os.environ.get(WRITE_PAUSE_ENV, "").partition(":")
    if target == name:
        time.sleep(float(seconds))
