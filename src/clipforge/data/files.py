"""Files that are never half-written, and the check that a resumed job is the same job.

Shared by the jobs that resume from a manifest: curation (:mod:`clipforge.data.curate`) and
embedding (:mod:`clipforge.serve.embed`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable


def atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Write through ``write(binary file)`` to a temporary name, flush to disk, then rename over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    atomic(path, lambda f: f.write((json.dumps(data, indent=1) + "\n").encode()))


def differing_keys(manifest: dict, header: dict) -> list[str]:
    """The keys of ``header`` whose value the stored ``manifest`` does not have (empty: the same job)."""
    return sorted(k for k in header if manifest.get(k) != header[k])


def read_same_job(path: Path, header: dict, error: type[Exception], advice: str) -> dict:
    """The manifest at ``path``, or ``error`` naming the folder and the settings that differ, then ``advice``."""
    manifest = json.loads(Path(path).read_text())
    differing = differing_keys(manifest, header)
    if differing:
        raise error(f"{Path(path).parent}: was written by a job with other settings or inputs "
                    f"({', '.join(differing)}); {advice}")
    return manifest


__all__ = ["atomic", "differing_keys", "read_same_job", "write_json"]
