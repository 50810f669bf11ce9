"""Ranks x workers: every sample exactly once per epoch (plus reported padding), equal batch counts.

The matrix runs real rank processes (world sizes 1-4), each with DataLoader worker processes
(0, 1, 3) over 7 shards of uneven size.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_data_common import fresh_processes, make_shards, plain_transform, toy_tokenizer

from clipforge.data.loader import DataConfig, build_loader
from clipforge.data.sharding import plan_epoch
from clipforge.data.sources import ShardRef

SIZES = [5, 9, 13, 4, 11, 7, 6]  # 55 samples
WORKERS = (0, 1, 3)


def refs(sizes: list[int]) -> list[ShardRef]:
    return [ShardRef(f"{i}.tar", f"{i}.tar", "wds", n) for i, n in enumerate(sizes)]


def test_plan_balances_shards_and_varies_by_epoch():
    shards = refs(SIZES)
    plan = plan_epoch(shards, num_slots=3, batch_size=4, seed=0, epoch=0)
    assert sorted(i for slot in plan.slots for i in slot) == list(range(7))
    loads = [sum(SIZES[i] for i in slot) for slot in plan.slots]
    assert max(loads) - min(loads) <= max(SIZES) and plan.expected == tuple(loads)
    assert plan.batches_per_slot == -(-max(loads) // 4)
    assert plan == plan_epoch(shards, num_slots=3, batch_size=4, seed=0, epoch=0)
    orders = {plan_epoch(shards, num_slots=3, batch_size=4, seed=0, epoch=e).slots for e in range(6)}
    assert len(orders) > 1  # shard order (and assignment) changes between epochs
    with pytest.raises(ValueError, match="counts unknown"):
        plan_epoch([ShardRef("x.tar", "x.tar")], num_slots=1, batch_size=4, seed=0, epoch=0)


def _rank_main(spec: str, rank: int, world: int, out_dir: str) -> None:
    """One rank (a separate process): run epoch 1 for each worker count; record what it saw."""
    results = {}
    for workers in WORKERS:
        config = DataConfig(shards=spec, batch_size=4, workers=workers, seed=3, shuffle_buffer=5)
        loader = build_loader(config, plain_transform, toy_tokenizer, rank=rank, world_size=world)
        loader.set_epoch(1)
        keys, batches = [], 0
        for batch in loader:
            keys += batch.keys
            batches += 1
        results[workers] = {"keys": keys, "batches": batches, "num_batches": loader.num_batches,
                            "padded": loader.report.padded, "seen": loader.report.seen}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_x_workers_see_every_sample_once_plus_reported_padding(tmp_path, world):
    ids = make_shards(tmp_path / "shards", SIZES)
    spec = str(tmp_path / "shards" / "{00000..00006}.tar")
    ctx = fresh_processes()
    procs = [ctx.Process(target=_rank_main, args=(spec, r, world, str(tmp_path))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    for workers in map(str, WORKERS):
        runs = [rank[workers] for rank in ranks]
        keys = [k for run in runs for k in run["keys"]]
        assert set(keys) == set(ids), f"world {world} workers {workers}: keys missing"
        assert len(keys) - len(ids) == sum(run["padded"] for run in runs)  # duplicates = padding
        assert sum(run["seen"] for run in runs) == len(ids)
        assert len({run["num_batches"] for run in runs}) == 1  # DDP-safe: same count everywhere
        assert all(run["batches"] == run["num_batches"] for run in runs)
