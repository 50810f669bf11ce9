"""An embedding job split across torchrun ranks: part k on rank k % world_size, manifests merged by rank 0.

See :mod:`clipforge.serve.embed` for the directory format. Each rank holds its own lock
(``.lock-rank-RRR``, with its pid inside) and writes only its parts and ``manifest-rank-RRR.json``;
``manifest.json`` is written by rank 0 alone, after a barrier.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm import tqdm

from clipforge.data.files import read_same_job
from clipforge.serve.embed import (ADVICE, FORMAT, MANIFEST, EmbedConfig, EmbedError, EmbedResult, Ranks, _chunks,
                                   _embed_part, _ids_digest, _load, _settings, _write_json)
from clipforge.serve.embed_sources import ItemSource

# Test hook, "RANK:PARTS:SECONDS": rank RANK pauses once it has written PARTS parts (a test kills it there).
PAUSE_ENV = "CLIPFORGE_TEST_EMBED_PAUSE"


def rank_manifest(out: Path, rank: int) -> Path:
    return out / f"manifest-rank-{rank:03d}.json"


def init_ranks() -> Ranks:
    """This process's share from torchrun's environment (gloo; one process without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), dist.barrier)


@contextlib.contextmanager
def _rank_lock(out: Path, rank: int) -> Iterator[None]:
    import fcntl

    with open(out / f".lock-rank-{rank:03d}", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EmbedError(f"{out}: another process is writing rank {rank}'s parts here") from None
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield


def _read_checked(path: Path, header: dict) -> dict | None:
    return read_same_job(path, header, EmbedError, ADVICE) if path.exists() else None


def finished_parts(out: Path, header: dict) -> dict[str, dict]:
    """Every part that manifest.json or any rank manifest lists (any earlier world size)."""
    parts: dict[str, dict] = {}
    for path in [out / MANIFEST] + sorted(out.glob("manifest-rank-*.json")):
        manifest = _read_checked(path, header)
        if manifest is not None:
            parts.update(manifest["parts"])
    return parts


def run_ranked(source: ItemSource, encode: Callable, out_dir, config: EmbedConfig, header: dict[str, Any],
               info: dict | None, prepare: Callable | None, ranks: Ranks) -> EmbedResult:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    full = {**header, "format": FORMAT, **_settings(config)}
    with _rank_lock(out, ranks.rank):
        done = finished_parts(out, full)
        mine = _read_checked(rank_manifest(out, ranks.rank), full) or {**full, "parts": {}}
        mine.update(info or {})
        result, n_parts, iterated = _embed_mine(source, encode, out, config, prepare, ranks, done, mine)
    ranks.barrier()
    if ranks.rank == 0:
        _merge(out, full, info, n_parts, iterated, source.failures)
    ranks.barrier()
    merged = json.loads((out / MANIFEST).read_text())
    result.complete, result.rows = bool(merged["complete"]), sum(p["rows"] for p in merged["parts"].values())
    return result


def _embed_mine(source, encode, out, config, prepare, ranks, done, mine):
    result = EmbedResult(out, complete=False)
    load = functools.partial(_load, prepare=prepare)
    n_parts, iterated = 0, True
    progress = tqdm(total=source.total, unit="item", desc=f"embed rank {ranks.rank}", mininterval=2.0,
                    dynamic_ncols=True, disable=ranks.rank != 0)
    with progress, ThreadPoolExecutor(max(1, config.workers)) as pool:
        for index, chunk in enumerate(_chunks(source.items, config.part_size)):
            n_parts = index + 1
            name, ids_sha1 = f"part-{index:05d}", _ids_digest(chunk)
            if name in done:
                if done[name]["ids_sha1"] != ids_sha1:
                    raise EmbedError(f"{out}: {name} was written from other items: the source changed since "
                                     "(use a new --out directory)")
                result.parts_reused.append(index)
            elif index % ranks.world_size == ranks.rank:
                if config.max_parts is not None and len(result.parts_written) >= config.max_parts:
                    iterated = False
                    break
                _test_pause(ranks.rank, len(result.parts_written))
                entry = _embed_part(out, name, chunk, load, encode, pool, config, progress)
                mine["parts"][name] = {**entry, "ids_sha1": ids_sha1, "items": len(chunk)}
                _write_json(rank_manifest(out, ranks.rank), mine)
                result.parts_written.append(index)
                result.skipped += [tuple(s) for s in entry["skipped"]]
                continue
            progress.update(len(chunk))
    return result, n_parts, iterated


def _merge(out: Path, header: dict, info: dict | None, n_parts: int, iterated: bool, failures: list) -> None:
    """Rank 0, after the barrier: one manifest.json with every finished part, complete when none is missing."""
    parts = finished_parts(out, header)
    complete = iterated and all(f"part-{i:05d}" in parts for i in range(n_parts))
    merged = {**header, **(info or {}), "complete": complete,
              "rows": sum(p["rows"] for p in parts.values()) if complete else None,
              "parts": dict(sorted(parts.items())), "failures": list(failures)}
    _write_json(out / MANIFEST, merged)
    if complete:
        for stale in out.glob("*.tmp"):  # a killed rank's unfinished write, now rewritten
            stale.unlink()


def _test_pause(rank: int, written: int) -> None:
    hook = os.environ.get(PAUSE_ENV)
    if hook:
        at_rank, at_parts, seconds = hook.split(":")
        if int(at_rank) == rank and int(at_parts) == written:
            time.sleep(float(seconds))


__all__ = ["finished_parts", "init_ranks", "rank_manifest", "run_ranked"]
