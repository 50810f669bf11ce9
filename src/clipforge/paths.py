"""Where clipforge keeps downloaded and derived files."""

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
