"""A vector index over unit image embeddings (FAISS), with the id and source of every row.

Scores are inner products of unit vectors, i.e. cosine similarities. Below ``exact_threshold``
vectors the index is exact (``IndexFlatIP``: every query compares with every row, fast enough for
hundreds of thousands of rows); above it, approximate (``IndexHNSWFlat``, inner-product metric),
whose recall is set by ``ef_search``.

On-disk format of an index directory (``format: clipforge-index/1``)::

    index.json      {"format", "kind": "flat"|"hnsw", "metric": "inner_product", "dim", "count",
                     "hnsw": {"m", "ef_construction", "ef_search"} (hnsw only),
                     "model": path of the model that made the vectors, "model_sha256",
                     "embeddings": the embedding directory it was built from}
    index.faiss     the FAISS index (faiss.write_index); row r of the index is row r below
    items.jsonl     one {"id": ..., "source": ...} a line, in row order (sources: image paths or shard#key)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "clipforge-index/1"
KINDS = ("auto", "flat", "hnsw")


class VectorIndexError(ValueError):
    """An index directory that cannot be read, or vectors that do not fit the index."""


@dataclass(frozen=True)
class IndexConfig:
    """kind: auto (flat below exact_threshold rows, else hnsw), flat (exact) or hnsw (approximate).
    hnsw_m: graph degree. ef_construction / ef_search: HNSW candidate list sizes (recall vs speed)."""

    kind: str = "auto"
    exact_threshold: int = 200_000
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, got {self.kind!r}")

    def resolved_kind(self, count: int) -> str:
        if self.kind != "auto":
            return self.kind
        return "flat" if count < self.exact_threshold else "hnsw"


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 [N, D] with unit rows (zero rows stay zero)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class VectorIndex:
    """Rows: unit vectors with ``ids[r]`` and ``sources[r]``; ``search`` returns cosine scores."""

    def __init__(self, faiss_index: Any, ids: list[str], sources: list[str], info: dict[str, Any]):
        if faiss_index.ntotal != len(ids) or len(ids) != len(sources):
            raise VectorIndexError(f"index has {faiss_index.ntotal} vectors but {len(ids)} ids and "
                                   f"{len(sources)} sources")
        self.faiss_index, self.ids, self.sources, self.info = faiss_index, ids, sources, info

    @classmethod
    def build(cls, vectors: np.ndarray, ids: list[str], sources: list[str],
              config: IndexConfig = IndexConfig(), info: dict[str, Any] | None = None) -> "VectorIndex":
        """Vectors [N, D] (normalized here) → an exact or HNSW index, per ``config``."""
        import faiss

        if vectors.ndim != 2 or len(vectors) != len(ids):
            raise VectorIndexError(f"expected vectors [N, D] with N = {len(ids)} ids, got shape {vectors.shape}")
        vectors = normalize_rows(vectors)
        kind, dim = config.resolved_kind(len(vectors)), vectors.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        else:
            index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = config.ef_construction
            index.hnsw.efSearch = config.ef_search
        index.add(vectors)
        meta = {"format": FORMAT, "kind": kind, "metric": "inner_product", "dim": dim, "count": len(ids),
                **(info or {})}
        if kind == "hnsw":
            meta["hnsw"] = {"m": config.hnsw_m, "ef_construction": config.ef_construction,
                            "ef_search": config.ef_search}
        return cls(index, list(ids), list(sources), meta)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.faiss_index.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Queries [Q, D] (normalized here) → (scores [Q, k'] float32, rows [Q, k'] int64), best first,
        with k' = min(k, len(self)); HNSW may return -1 rows (score -inf) when it finds fewer."""
        queries = np.atleast_2d(queries)
        if queries.shape[1] != self.dim:
            raise VectorIndexError(f"query vectors have dimension {queries.shape[1]}, the index has {self.dim}")
        k = max(0, min(int(k), len(self)))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        scores, rows = self.faiss_index.search(normalize_rows(queries), k)
        scores = np.where(rows < 0, -np.inf, scores).astype(np.float32)
        return scores, rows.astype(np.int64)

    def save(self, directory: str | os.PathLike) -> Path:
        import faiss

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "index.faiss.tmp"
        faiss.write_index(self.faiss_index, str(tmp))
        os.replace(tmp, out / "index.faiss")
        lines = "".join(json.dumps({"id": i, "source": s}) + "\n" for i, s in zip(self.ids, self.sources))
        (out / "items.jsonl.tmp").write_text(lines, encoding="utf-8")
        os.replace(out / "items.jsonl.tmp", out / "items.jsonl")
        # index.json last: a directory with it is complete.
        (out / "index.json.tmp").write_text(json.dumps(self.info, indent=1) + "\n")
        os.replace(out / "index.json.tmp", out / "index.json")
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike, ef_search: int | None = None) -> "VectorIndex":
        import faiss

        path = Path(directory)
        if not (path / "index.json").is_file():
            raise VectorIndexError(f"{path}: no index.json; not an index directory written by `clipforge index`")
        info = json.loads((path / "index.json").read_text())
        if info.get("format") != FORMAT:
            raise VectorIndexError(f"{path}: unknown index format {info.get('format')!r}, expected {FORMAT!r}")
        index = faiss.read_index(str(path / "index.faiss"))
        if ef_search is not None and info.get("kind") == "hnsw":
            index.hnsw.efSearch = ef_search
        ids, sources = [], []
        with open(path / "items.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                ids.append(row["id"])
                sources.append(row["source"])
        return cls(index, ids, sources, info)


def build_from_embeddings(embeddings_dir: str | os.PathLike, config: IndexConfig = IndexConfig()) -> VectorIndex:
    """An index over a finished ``clipforge embed --images`` directory."""
    from clipforge.serve.embed import read_embeddings

    emb = read_embeddings(embeddings_dir)
    if emb.manifest.get("kind") != "image":
        raise VectorIndexError(f"{embeddings_dir}: holds {emb.manifest.get('kind')} embeddings; the index is "
                               "for images")
    if len(emb.ids) == 0:
        raise VectorIndexError(f"{embeddings_dir}: no embeddings to index")
    info = {"model": emb.manifest.get("model"), "model_sha256": emb.manifest.get("model_sha256"),
            "embeddings": str(Path(embeddings_dir).resolve())}
    return VectorIndex.build(emb.vectors, emb.ids, emb.sources, config, info)


__all__ = ["IndexConfig", "VectorIndex", "VectorIndexError", "build_from_embeddings", "normalize_rows"]
