"""``clipforge data download``: a curated list → webdataset shards, by img2dataset (the ``download`` extra).

img2dataset does the fetching (threads × processes, retries, resizing, per-shard ``_stats.json``);
this sets it up for what ``clipforge train`` reads: webdataset output, the caption column, the
pair's ``uid`` kept in each sample's ``.json``, shorter side resized to ``image_size`` keeping the
aspect ratio (as LAION's shards). A rerun continues where it stopped (img2dataset's incremental
mode skips finished shards). Afterwards ``sizes.json`` (successes per shard) is written beside the
shards and the per-shard stats are summed: successes, failures by kind and the most common errors.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DownloadConfig:
    image_size: int = 256
    processes: int = 2
    threads: int = 16
    shard_size: int = 10_000
    timeout: float = 10.0
    retries: int = 0


def url_list(curated: str | os.PathLike) -> str:
    """The folder of parquet files img2dataset should read: ``<curate out>/selected`` or the path itself."""
    path = Path(curated)
    if (path / "selected").is_dir():
        path = path / "selected"
    if path.is_dir() and not any(path.glob("*.parquet")):
        raise ValueError(f"{path}: no .parquet url lists (did `clipforge data curate` keep any pair?)")
    if not path.exists():
        raise FileNotFoundError(f"{curated}: no such curate output or parquet file")
    return str(path)


def download(curated: str | os.PathLike, out_dir: str | os.PathLike, config: DownloadConfig = DownloadConfig()) -> dict:
    """Run img2dataset on the curated list; returns the summed statistics (also in ``download_stats.json``)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations otherwise asks the network at import
    try:
        from img2dataset import download as img2dataset_download
    except ImportError:
        raise RuntimeError("downloading needs img2dataset: pip install 'clipforge[download]'") from None
    out = Path(out_dir)
    source = url_list(curated)
    img2dataset_download(
        url_list=source, input_format="parquet", url_col="url", caption_col="caption",
        save_additional_columns=["uid"], output_folder=str(out), output_format="webdataset",
        image_size=config.image_size, resize_mode="keep_ratio", resize_only_if_bigger=True,
        processes_count=config.processes, thread_count=config.threads, number_sample_per_shard=config.shard_size,
        timeout=config.timeout, retries=config.retries, enable_wandb=False, distributor="multiprocessing",
        incremental_mode="incremental",
    )
    return summarize(out)


def summarize(out: Path) -> dict:
    """Sum img2dataset's ``*_stats.json``; write ``sizes.json`` (the loader's counts) and ``download_stats.json``."""
    sizes, errors = {}, Counter()
    total = {"count": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0}
    for stats_file in sorted(out.glob("*_stats.json")):
        stats = json.loads(stats_file.read_text())
        shard = stats_file.name[: -len("_stats.json")] + ".tar"
        if (out / shard).is_file():
            sizes[shard] = int(stats.get("successes", 0))
        for key in total:
            total[key] += int(stats.get(key, 0))
        errors.update(stats.get("status_dict", {}))
    errors.pop("success", None)
    summary = {**total, "shards": len(sizes), "errors": dict(errors.most_common(10)), "out": str(out)}
    (out / "sizes.json").write_text(json.dumps(dict(sorted(sizes.items())), indent=1))
    (out / "download_stats.json").write_text(json.dumps(summary, indent=1))
    return summary


__all__ = ["DownloadConfig", "download", "summarize", "url_list"]
