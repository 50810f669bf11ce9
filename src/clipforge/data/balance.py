"""Query balancing as pure array functions: priorities, at most N pairs per query, first occurrences.

The rule (the same on one machine and on Spark, so both select exactly the same pairs):

- Every (pair, query) match gets a priority ``splitmix64(hash(uid) ^ splitmix64(query id ^ seed))``:
  a 64-bit pseudo-random number fixed by the pair's uid, the query and the seed, and by nothing
  else (not the input order, the part size or the number of workers).
- For each query, the matches with the ``cap`` smallest priorities are selected: a uniform random
  sample of ``min(cap, matches)`` of the pairs containing that query, independent across queries.
- A pair is kept when at least one of its queries selected it. A kept pair may also contain other
  queries that did not select it, so the kept pairs containing a query can exceed ``cap``; the
  report gives both counts per query.

Duplicates (same uid, URL or image hash) keep their first occurrence in pool order.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def hash64(texts: Sequence[str]) -> np.ndarray:
    """A stable 64-bit hash (BLAKE2b, 8 bytes, little-endian) of each text → uint64 [N]."""
    out = np.empty(len(texts), dtype=np.uint64)
    for i, text in enumerate(texts):
        out[i] = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
    return out


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (Steele et al.): a bijective mix of uint64 [N] → uint64 [N]."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def priorities(uid_hash: np.ndarray, query_ids: np.ndarray, seed: int) -> np.ndarray:
    """Priority of each match: ``uid_hash`` uint64 [M] (the pair's) and ``query_ids`` int [M] → uint64 [M]."""
    salt = splitmix64(np.asarray(query_ids, dtype=np.uint64) ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
    return splitmix64(np.asarray(uid_hash, dtype=np.uint64) ^ salt)


def select_per_query(query_ids: np.ndarray, prio: np.ndarray, cap: int) -> np.ndarray:
    """Which matches are selected: for each query the ``cap`` smallest priorities → bool [M].

    ``query_ids`` int [M], ``prio`` uint64 [M]. Equal priorities (a 2^-64 event for distinct uids)
    are broken by position, so the result is still deterministic for a given input.
    """
    n = len(query_ids)
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort((prio, query_ids))  # by query, then priority
    q = np.asarray(query_ids)[order]
    starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.arange(n) - group_start
    selected = np.zeros(n, dtype=bool)
    selected[order[rank < cap]] = True
    return selected


def first_occurrences(hashes: np.ndarray, order_key: np.ndarray) -> np.ndarray:
    """bool [N]: True where an item is the first (smallest ``order_key``) of its hash; 0 hashes never collide.

    ``hashes`` uint64 [N] (0 = no value, e.g. no URL), ``order_key`` int64 [N] (the pool position).
    """
    n = len(hashes)
    first = np.ones(n, dtype=bool)
    if n == 0:
        return first
    order = np.lexsort((order_key, hashes))
    h = hashes[order]
    repeat = np.r_[False, h[1:] == h[:-1]] & (h != 0)
    first[order[repeat]] = False
    return first


def hash_bucket(hashes: np.ndarray, buckets: int) -> np.ndarray:
    """Bucket of each hash (its remainder: hashes are uniform), for processing hashes a bucket at a time."""
    return (np.asarray(hashes, dtype=np.uint64) % np.uint64(max(1, buckets))).astype(np.int64)


__all__ = ["first_occurrences", "hash64", "hash_bucket", "priorities", "select_per_query", "splitmix64"]
