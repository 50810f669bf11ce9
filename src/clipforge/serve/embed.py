"""Embedding many images or texts into part files, resumable after an interruption.

On-disk format of an embedding directory (``format: clipforge-embeddings/1``)::

    manifest.json            settings + one entry per finished part (rewritten atomically)
    part-00000.npy           float16/float32 [rows, D], L2-normalized rows       (format "npy")
    part-00000.ids.json      {"ids": [...], "sources": [...]}, one per row       (format "npy")
    part-00000.parquet       columns id (string), source (string),
                             embedding (fixed_size_list<halffloat|float>[D])     (format "parquet")

Items are numbered in their source's fixed order; part k holds items [k·part_size, (k+1)·part_size)
minus the ones that failed to decode (listed under ``skipped`` with a reason). A part's files are
written to temporary names and renamed, then the manifest is rewritten (temp + rename), so a part
is finished exactly when the manifest lists it. A restart with the same settings skips finished
parts (items are read but not decoded or encoded) after checking that the source still lists the
same ids there (``ids_sha1``).

Under torchrun (``world_size`` > 1) part k belongs to rank ``k % world_size``. Each rank writes its
own parts and its own ``manifest-rank-RRR.json`` (so no two processes write one file), skips parts
that any manifest lists as finished (whatever the world size of the run that wrote them), and
after a barrier rank 0 merges every manifest into ``manifest.json``. The part files are the ones a
single process writes; a rank killed mid-run loses only the part it was writing.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from clipforge.data.decode import BadSample
from clipforge.data.files import atomic as _atomic
from clipforge.data.files import read_same_job
from clipforge.data.files import write_json as _write_json
from clipforge.serve.embed_sources import Item, ItemSource

FORMAT = "clipforge-embeddings/1"
MANIFEST = "manifest.json"
DTYPES = ("float16", "float32")
FILE_FORMATS = ("npy", "parquet")
ADVICE = "resume with the same model, source and settings, or use a new --out directory"


@dataclass(frozen=True)
class Ranks:
    """This process's rank, the number of processes, and a barrier across them (torch.distributed)."""

    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], None] = lambda: None


class EmbedError(RuntimeError):
    """The output directory holds another job's parts, or cannot be used."""


@dataclass(frozen=True)
class EmbedConfig:
    """part_size: items per part file (the unit of resumption). batch_size: items per forward pass.
    dtype: stored precision. format: npy (+ ids.json) or parquet. workers: image-decoding threads.
    max_parts: stop after writing this many new parts (the rest on a later run)."""

    part_size: int = 10_000
    batch_size: int = 64
    dtype: str = "float16"
    format: str = "npy"
    workers: int = 4
    max_parts: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.format not in FILE_FORMATS:
            raise ValueError(f"format must be one of {FILE_FORMATS}, got {self.format!r}")
        if self.part_size < 1 or self.batch_size < 1 or self.workers < 0:
            raise ValueError("part_size and batch_size must be >= 1 and workers >= 0")


@dataclass
class EmbedResult:
    out_dir: Path
    complete: bool
    rows: int = 0
    parts_written: list[int] = field(default_factory=list)
    parts_reused: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason) in parts written now


def run_embedding(source: ItemSource, encode: Callable[[list], np.ndarray], out_dir: str | os.PathLike,
                  config: EmbedConfig, header: dict[str, Any], info: dict[str, Any] | None = None,
                  prepare: Callable[[Any], Any] | None = None, ranks: Ranks | None = None) -> EmbedResult:
    """Embed ``source``'s items with ``encode`` (list of loaded items → float32 [N, D]) into ``out_dir``.

    ``header`` identifies the job (e.g. kind, source, model fingerprint); a restart must give the same
    one. ``info`` is recorded in the manifest but not compared (e.g. the model's path). ``prepare``
    runs on each loaded item in the decoding threads (e.g. the image transform), before ``encode``.
    ``ranks``: this process's share under torchrun (see the module doc); None = one process.
    """
    if ranks is not None and ranks.world_size > 1:
        from clipforge.serve.embed_ranks import run_ranked

        return run_ranked(source, encode, out_dir, config, header, info, prepare, ranks)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        manifest = _open_manifest(out, {**header, "format": FORMAT, **_settings(config)})
        manifest.update(info or {})
        result = EmbedResult(out, complete=False)
        progress = tqdm(total=source.total, unit="item", desc="embed", mininterval=2.0, dynamic_ncols=True)
        with progress, ThreadPoolExecutor(max(1, config.workers)) as pool:
            for index, chunk in enumerate(_chunks(source.items, config.part_size)):
                name = f"part-{index:05d}"
                ids_sha1 = _ids_digest(chunk)
                done = manifest["parts"].get(name)
                if done is not None:
                    if done["ids_sha1"] != ids_sha1:
                        raise EmbedError(f"{out}: {name} was written from other items: the source changed since "
                                         "(use a new --out directory)")
                    result.parts_reused.append(index)
                    result.rows += done["rows"]
                elif config.max_parts is not None and len(result.parts_written) >= config.max_parts:
                    break
                else:
                    load = functools.partial(_load, prepare=prepare)
                    entry = _embed_part(out, name, chunk, load, encode, pool, config, progress)
                    manifest["parts"][name] = {**entry, "ids_sha1": ids_sha1, "items": len(chunk)}
                    manifest["failures"] = list(source.failures)
                    _write_json(out / MANIFEST, manifest)
                    result.parts_written.append(index)
                    result.rows += entry["rows"]
                    result.skipped += [tuple(s) for s in entry["skipped"]]
                    continue
                progress.update(len(chunk))
            else:
                result.complete = True
        if result.complete:
            manifest.update(complete=True, rows=result.rows, failures=list(source.failures))
            manifest["parts"] = {k: v for k, v in sorted(manifest["parts"].items())}
            _write_json(out / MANIFEST, manifest)
    return result


def _settings(config: EmbedConfig) -> dict[str, Any]:
    # Settings that change the files; batch_size, workers and max_parts do not.
    return {"part_size": config.part_size, "dtype": config.dtype, "file_format": config.format}


def _open_manifest(out: Path, header: dict[str, Any]) -> dict[str, Any]:
    for stale in out.glob("*.tmp"):  # left by a run killed mid-write
        stale.unlink()
    path = out / MANIFEST
    if not path.exists():
        if any(out.glob("part-*")):
            raise EmbedError(f"{out}: holds part files but no {MANIFEST}; use an empty or new directory")
        manifest = {**header, "complete": False, "rows": None, "parts": {}, "failures": []}
        _write_json(path, manifest)
        return manifest
    return read_same_job(path, header, EmbedError, ADVICE)


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One job per directory; the OS drops the lock when the process dies, so a killed run can resume."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks, run one job at a time by hand
        yield
        return
    with open(out / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EmbedError(f"{out}: another embedding job is writing here") from None
        yield


def _chunks(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _ids_digest(chunk: Sequence[Item]) -> str:
    return hashlib.sha1("\n".join(item.id for item in chunk).encode("utf-8")).hexdigest()


def _load(item: Item, prepare: Callable[[Any], Any] | None) -> Any:
    try:
        loaded = item.load()
    except BadSample as err:
        return err
    if prepare is None:
        return loaded
    try:
        return prepare(loaded)
    except Exception as err:  # a transform failing on one odd image must not end the job
        return BadSample("transform_error", f"{type(err).__name__}: {err}")


def _embed_part(out: Path, name: str, chunk: list[Item], load, encode, pool: ThreadPoolExecutor,
                config: EmbedConfig, progress: tqdm) -> dict[str, Any]:
    vectors, ids, sources, skipped = [], [], [], []
    batches = [chunk[i : i + config.batch_size] for i in range(0, len(chunk), config.batch_size)]
    pending = [pool.submit(load, item) for item in batches[0]] if batches else []
    for b, batch in enumerate(batches):
        loaded = [f.result() for f in pending]
        # Decode the next batch while this one is encoded.
        pending = [pool.submit(load, item) for item in batches[b + 1]] if b + 1 < len(batches) else []
        good = [(item, obj) for item, obj in zip(batch, loaded) if not isinstance(obj, BadSample)]
        skipped += [[item.id, obj.reason] for item, obj in zip(batch, loaded) if isinstance(obj, BadSample)]
        if good:
            vectors.append(np.asarray(encode([obj for _, obj in good]), dtype=np.float32))
            ids += [item.id for item, _ in good]
            sources += [item.source for item, _ in good]
        progress.update(len(batch))
    dim = vectors[0].shape[1] if vectors else 0
    array = (np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)).astype(config.dtype)
    files = _write_part(out, name, array, ids, sources, config.format)
    return {"rows": len(ids), "dim": dim, "files": files, "skipped": skipped, "written_at": time.time()}


def _write_part(out: Path, name: str, array: np.ndarray, ids: list[str], sources: list[str], fmt: str) -> list[str]:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        flat = pa.array(array.reshape(-1))
        table = pa.table({"id": ids, "source": sources,
                          "embedding": pa.FixedSizeListArray.from_arrays(flat, max(1, array.shape[1]))})
        _atomic(out / f"{name}.parquet", lambda f: pq.write_table(table, f))
        return [f"{name}.parquet"]
    _atomic(out / f"{name}.npy", lambda f: np.save(f, array, allow_pickle=False))
    _atomic(out / f"{name}.ids.json", lambda f: f.write(json.dumps({"ids": ids, "sources": sources}).encode()))
    return [f"{name}.npy", f"{name}.ids.json"]


@dataclass
class Embeddings:
    """A finished embedding directory in memory: vectors float32 [N, D] and one id/source per row."""

    vectors: np.ndarray
    ids: list[str]
    sources: list[str]
    manifest: dict[str, Any]


def read_embeddings(path: str | os.PathLike, allow_incomplete: bool = False) -> Embeddings:
    """All parts of an embedding directory, in item order, as float32."""
    out = Path(path)
    if not (out / MANIFEST).is_file():
        raise EmbedError(f"{out}: no {MANIFEST}; not an embedding directory written by `clipforge embed`")
    manifest = json.loads((out / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise EmbedError(f"{out}: unknown format {manifest.get('format')!r}, expected {FORMAT!r}")
    if not manifest.get("complete") and not allow_incomplete:
        raise EmbedError(f"{out}: the embedding job has not finished; run `clipforge embed` again to complete it")
    vectors, ids, sources = [], [], []
    for name in sorted(manifest["parts"]):
        array, part_ids, part_sources = _read_part(out, name, manifest["file_format"])
        vectors.append(array.astype(np.float32))
        ids += part_ids
        sources += part_sources
    dims = {v.shape[1] for v in vectors if len(v)}
    dim = dims.pop() if len(dims) == 1 else 0
    matrix = np.concatenate([v for v in vectors if len(v)]) if dim else np.zeros((0, 0), np.float32)
    return Embeddings(matrix, ids, sources, manifest)


def _read_part(out: Path, name: str, fmt: str) -> tuple[np.ndarray, list[str], list[str]]:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(out / f"{name}.parquet")
        column = table.column("embedding").combine_chunks()
        flat = column.values.to_numpy(zero_copy_only=False)
        array = flat.reshape(len(table), -1) if len(table) else np.zeros((0, 0), np.float32)
        return array, table.column("id").to_pylist(), table.column("source").to_pylist()
    array = np.load(out / f"{name}.npy", allow_pickle=False)
    meta = json.loads((out / f"{name}.ids.json").read_text())
    return array, meta["ids"], meta["sources"]


__all__ = ["EmbedConfig", "EmbedError", "EmbedResult", "Embeddings", "read_embeddings", "run_embedding"]
