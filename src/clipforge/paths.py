"""Where clipforge keeps downloaded and derived files, and how it writes a file whole."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$CLIPFORGE_CACHE``, else ``$XDG_CACHE_HOME/clipforge``, else ``~/.cache/clipforge``.

    Holds OpenAI's checkpoints and vocabulary (downloaded once) and zero-shot heads (``zeroshot/``).
    """
    if os.environ.get("CLIPFORGE_CACHE"):
        return Path(os.environ["CLIPFORGE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "clipforge"


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (str: UTF-8) to ``path`` whole or not at all.

    The bytes go to a temporary file beside ``path`` (``.<name>.<pid>.tmp``), are fsynced, then
    renamed over ``path``: a process killed at any moment leaves the old file or the new one,
    never an empty or partial file.
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
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
