"""Scan a dataset once, in one process, and report every bad sample (``clipforge data check``).

Unlike the loader (which checks duplicates within a shard only, to stay streaming), the scan sees
every key and so also finds duplicates across shards. It can write the ``sizes.json`` count file
that the loader needs to give every rank the same number of batches.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from clipforge.data.decode import CAPTION_EXTS, IMAGE_EXTS, BadSample, DecodeConfig, decode_caption, decode_image, pick
from clipforge.data.report import DataReport
from clipforge.data.sources import RawSample, ShardFailure, iter_shard, list_shards, load_bytes


@dataclass
class ScanResult:
    """The report, and readable samples per shard name (what a sizes.json should say)."""

    report: DataReport
    sizes: dict[str, int]
    urls: dict[str, str]


def check_sample(item: RawSample, decode: DecodeConfig) -> None:
    """Raise :class:`BadSample` if the loader would skip ``item``."""
    if item.flaw:
        raise BadSample(item.flaw)
    _, image = pick(item.files, IMAGE_EXTS)
    if image is None:
        raise BadSample("missing_image")
    decode_caption(load_bytes(pick(item.files, CAPTION_EXTS)[1]))
    data = load_bytes(image)
    if data is None:
        raise BadSample("missing_image", "file not found")
    decode_image(data, decode)


def scan(spec: str, source: str = "auto", decode: DecodeConfig = DecodeConfig(), progress=None) -> ScanResult:
    """Read and decode every sample of ``spec``; ``progress(shard_name)`` is called per shard."""
    report = DataReport()
    sizes: dict[str, int] = {}
    urls: dict[str, str] = {}
    keys: set[str] = set()
    # Counts would make a truncated shard look "lost" against a stale count file; read without them.
    for ref in list_shards(spec, source):
        ref = type(ref)(ref.url, ref.name, ref.kind, None, ref.items)
        urls[ref.name] = ref.url
        sizes[ref.name] = 0
        for item in iter_shard(ref):
            if isinstance(item, ShardFailure):
                report.add_failure(item)
                continue
            sizes[ref.name] += 1
            try:
                if item.key in keys and not item.flaw:
                    raise BadSample("duplicate_key", "seen in an earlier shard")
                keys.add(item.key)
                check_sample(item, decode)
                report.seen += 1
            except BadSample as bad:
                report.add_bad(item.shard, item.key, bad.reason, bad.detail)
        if progress is not None:
            progress(ref.name)
    return ScanResult(report, sizes, urls)


def sizes_by_folder(result: ScanResult) -> dict[str, dict[str, int]]:
    """Group counts per shard folder, ready to write one sizes.json in each."""
    out: dict[str, dict[str, int]] = {}
    for name, n in result.sizes.items():
        if "#" in name:  # csv/folder row ranges have no count file
            continue
        out.setdefault(posixpath.dirname(result.urls[name]), {})[name] = n
    return out
