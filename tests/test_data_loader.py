"""The loader on real shard files: bad data, broken shards, error budget, shuffling, resume."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from test_data_common import (bad_shard, crop_transform, fresh_processes, good_members, jpeg_bytes, make_shards,
                              toy_tokenizer, write_tar)

from clipforge.data.loader import DataConfig, build_loader
from clipforge.data.report import ErrorBudgetExceeded


def make_loader(shards, workers=0, transform=crop_transform, rank=0, world_size=1, **kw):
    kw.setdefault("batch_size", 4)
    return build_loader(DataConfig(shards=shards, workers=workers, **kw), transform, toy_tokenizer, rank, world_size)


def keys_of(loader) -> list[str]:
    return [k for batch in loader for k in batch.keys]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_bad_samples_are_skipped_counted_and_listed(tmp_path, workers):
    bad = bad_shard(tmp_path / "00000.tar")
    write_tar(tmp_path / "00001.tar", [m for i in range(6) for m in good_members(f"g{i}", 50 + i)])
    report_path = tmp_path / "report.json"
    loader = make_loader(str(tmp_path / "{00000..00001}.tar"), workers, error_budget=1.0, report=str(report_path))
    batches = list(loader)
    assert len(batches) == loader.num_batches
    for batch in batches:
        images, tokens = batch
        assert images.shape == (4, 3, 8, 8) and images.dtype == torch.float32
        assert tokens.shape == (4, 12) and tokens.dtype == torch.long
    report = json.loads(report_path.read_text())
    assert {s["key"]: s["reason"] for s in report["samples"]} == bad
    assert report["skipped"] == len(bad) == sum(report["by_reason"].values())
    assert report["seen"] == 12 and report["skipped_by_shard"] == {"00000.tar": len(bad)}
    delivered = [k for b in batches for k in b.keys]
    good = {f"00000.tar/good{i}" for i in range(6)} | {f"00001.tar/g{i}" for i in range(6)}
    assert set(delivered) == good
    assert len(delivered) - len(set(delivered)) == report["padded"]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_error_budget_stops_the_run_and_names_the_worst_shard(tmp_path, workers):
    make_shards(tmp_path, [10, 10, 10], with_counts=False)
    bad_shard(tmp_path / "00003.tar")
    loader = make_loader(str(tmp_path / "{00000..00003}.tar"), workers, report=str(tmp_path / "r.json"))
    with pytest.raises(ErrorBudgetExceeded, match=r"worst shard so far: 00003\.tar \((\d+) errors\); "
                                                  r"errors per shard so far: 00003\.tar=\1;"):
        list(loader)
    assert json.loads((tmp_path / "r.json").read_text())["skipped"] >= 1
    # Within budget: 8 bad of 44 is 18%.
    assert len(keys_of(make_loader(str(tmp_path / "{00000..00003}.tar"), 0, error_budget=0.2))) > 0


@pytest.mark.slow
def test_tar_cut_mid_member_is_a_shard_error_and_the_rest_goes_on(tmp_path):
    make_shards(tmp_path, [6, 6, 6])
    offsets = write_tar(tmp_path / "00001.tar", [m for i in range(6) for m in good_members(f"{1:03d}{i:04d}", i)])
    data = (tmp_path / "00001.tar").read_bytes()
    (tmp_path / "00001.tar").write_bytes(data[: offsets[3 * 3 + 1] + 7])  # inside sample 3's caption
    loader = make_loader(str(tmp_path / "{00000..00002}.tar"), 2, error_budget=1.0)
    delivered = keys_of(loader)
    rep = loader.report
    assert [e["shard"] for e in rep.shard_errors] == ["00001.tar"]
    assert rep.seen == 6 + 3 + 6 and rep.by_reason == {"truncated_shard": 1} and rep.lost == 2
    assert rep.seen + rep.skipped + rep.lost == 18  # every sample of the count file accounted for
    expected = {f"{s:05d}.tar/{s:03d}{i:04d}" for s in (0, 2) for i in range(6)}
    expected |= {f"00001.tar/001{i:04d}" for i in range(3)}
    assert set(delivered) == expected


@pytest.mark.slow
def test_shuffling_is_deterministic_per_seed_and_epoch(tmp_path):
    ids = make_shards(tmp_path, [7, 5, 9, 3])
    spec = str(tmp_path / "{00000..00003}.tar")

    def order(seed, epoch, workers=0):
        loader = make_loader(spec, workers, seed=seed, shuffle_buffer=8)
        loader.set_epoch(epoch)
        return keys_of(loader)

    first = order(0, 0)
    assert first == order(0, 0) and set(first) == set(ids)
    assert first != order(0, 1) and first != order(1, 0)
    assert order(0, 3, workers=2) == order(0, 3, workers=2)  # independent of worker timing
    assert set(order(0, 1, workers=2)) == set(ids)


@pytest.mark.slow
def test_resampled_and_fixed_epoch_sizes(tmp_path):
    ids = set(make_shards(tmp_path, [7, 5, 9, 3]))
    spec = str(tmp_path / "{00000..00003}.tar")
    loader = make_loader(spec, 2, resampled=True, epoch_size=40)
    assert loader.num_batches == 10  # ceil(40 / (2 workers * 4)) per worker
    drawn = keys_of(loader)
    assert len(drawn) == 40 and set(drawn) <= ids and drawn == keys_of(make_loader(spec, 2, resampled=True, epoch_size=40))
    loader.set_epoch(1)
    assert keys_of(loader) != drawn
    fixed = make_loader(spec, 0, epoch_size=16)
    assert fixed.num_batches == 4 and len(set(keys_of(fixed))) == 16


@pytest.mark.slow
def test_csv_and_folder_sources_load(tmp_path):
    (tmp_path / "imgs").mkdir()
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "caption"])
        for i in range(6):
            (tmp_path / "imgs" / f"{i}.jpg").write_bytes(jpeg_bytes(i))
            (tmp_path / "imgs" / f"{i}.txt").write_text(f"folder caption {i}")
            writer.writerow([f"imgs/{i}.jpg", f"csv caption {i}"])
    assert len(keys_of(make_loader(str(tmp_path / "pairs.csv"), 0, batch_size=3))) == 6
    delivered = keys_of(make_loader(str(tmp_path / "imgs"), 2, batch_size=3))
    assert set(delivered) == {f"imgs#0/{i}" for i in range(6)}  # one row range: the 2nd worker pads


# -- exact resume in a fresh process -------------------------------------------------------------


def _loader_for_resume(spec: str, workers: int, resampled: bool):
    from clipforge.transforms import train_transform  # the real training transform (random crops)

    return make_loader(spec, workers, transform=train_transform(16, scale=(0.5, 1.0)), batch_size=3,
                       seed=11, shuffle_buffer=6, resampled=resampled, epoch_size=30 if resampled else None)


def _run(spec: str, workers: int, resampled: bool, epoch: int, stop_after: int | None = None,
         state: dict | None = None):
    loader = _loader_for_resume(spec, workers, resampled)
    if state is not None:
        loader.load_state_dict(state)
    else:
        loader.set_epoch(epoch)
    out = []
    for batch in loader:
        out.append((batch.images, batch.tokens, batch.keys))
        if len(out) == stop_after:
            return out, loader.state_dict()
    return out, loader.state_dict()


def _resume_child(spec: str, workers: int, resampled: bool, state_file: str, out_file: str) -> None:
    """Runs in a new process: restore the saved position, produce the rest of the epoch."""
    state = json.loads(Path(state_file).read_text())
    torch.save(_run(spec, workers, resampled, -1, state=state)[0], out_file)


@pytest.mark.parametrize("sizes, workers, resampled", [
    ([9, 6, 11, 4, 7], 0, False),
    ([9, 6, 11, 4, 7], 2, False),
    ([20, 4], 2, False),  # worker 1 is deep in padding when the run stops
    ([9, 6, 11, 4, 7], 2, True),
])
@pytest.mark.slow
def test_resume_mid_epoch_in_a_new_process_is_bitwise_exact(tmp_path, sizes, workers, resampled):
    make_shards(tmp_path, sizes)
    spec = str(tmp_path / f"{{00000..{len(sizes) - 1:05d}}}.tar")
    full, _ = _run(spec, workers, resampled, epoch=1)
    stop = 5  # not a multiple of the worker count: the cycle must restart at worker 1
    head, state = _run(spec, workers, resampled, epoch=1, stop_after=stop)
    (tmp_path / "state.json").write_text(json.dumps(state))  # plain data, fits any checkpoint
    args = (spec, workers, resampled, str(tmp_path / "state.json"), str(tmp_path / "rest.pt"))
    proc = fresh_processes().Process(target=_resume_child, args=args)
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0
    rest = torch.load(tmp_path / "rest.pt")
    assert len(head) + len(rest) == len(full) and state["batches"] == stop
    for (a_img, a_tok, a_keys), (b_img, b_tok, b_keys) in zip(full, head + rest):
        assert a_keys == b_keys and torch.equal(a_img, b_img) and torch.equal(a_tok, b_tok)


def test_state_from_another_configuration_is_refused(tmp_path):
    make_shards(tmp_path, [5, 5])
    spec = str(tmp_path / "{00000..00001}.tar")
    state = make_loader(spec, 2).state_dict()
    with pytest.raises(ValueError, match="workers"):
        make_loader(spec, 3).load_state_dict(state)


def test_large_jpegs_decode_in_draft_mode_at_the_transform_size(tmp_path):
    members = [m for i in range(4) for m in ((f"k{i}.jpg", jpeg_bytes(i, (256, 192))), (f"k{i}.txt", b"a big photo"))]
    write_tar(tmp_path / "00000.tar", members)
    seen_sizes = []

    class Recording:
        image_size = 32

        def __call__(self, image):
            seen_sizes.append(image.size)
            return torch.zeros(3, 32, 32)

    assert len(keys_of(make_loader(str(tmp_path / "00000.tar"), 0, transform=Recording()))) == 4
    assert seen_sizes == [(64, 48)] * 4  # libjpeg's 1/4 scale: the shorter side stays >= 32


def test_epochs_restart_but_a_restored_finished_epoch_stays_finished(tmp_path):
    make_shards(tmp_path, [5, 6])
    loader = make_loader(str(tmp_path / "{00000..00001}.tar"), 0)
    first = keys_of(loader)
    assert keys_of(loader) == first  # iterating a finished epoch again replays it
    state = loader.state_dict()
    restored = make_loader(str(tmp_path / "{00000..00001}.tar"), 0)
    restored.load_state_dict(state)
    restored.set_epoch(0)
    assert keys_of(restored) == []  # resuming at the end of epoch 0 does not replay it
    restored.set_epoch(1)
    assert len(keys_of(restored)) == len(first)


_ABANDON = """
import sys
sys.path.insert(0, {tests!r})
from test_data_common import crop_transform, toy_tokenizer
from clipforge.data.loader import DataConfig, build_loader
loader = build_loader(DataConfig(shards={shards!r}, batch_size=4, report={report!r}), crop_transform, toy_tokenizer)
batches = iter(loader)
next(batches)  # abandoned mid-epoch: the interpreter closes the generator as it exits
"""


@pytest.mark.slow
def test_a_loop_abandoned_at_exit_leaves_no_error_behind(tmp_path):
    import subprocess
    import sys

    make_shards(tmp_path, [8, 8])
    script = _ABANDON.format(tests=str(Path(__file__).parent), shards=str(tmp_path / "{00000..00001}.tar"),
                             report=str(tmp_path / "report.json"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def _niceness_image(image, rng=None):
    """A transform that reports the niceness of the process it runs in, as the image."""
    return torch.full((3, 8, 8), float(os.nice(0)))


@pytest.mark.slow
def test_worker_nice_lowers_only_the_workers_priority(tmp_path):
    make_shards(tmp_path, [6])
    base = os.nice(0)
    loader = make_loader(str(tmp_path / "00000.tar"), workers=1, transform=_niceness_image, worker_nice=7)
    seen = {float(v) for batch in loader for v in batch.images[:, 0, 0, 0]}
    assert seen == {float(min(19, base + 7))} and os.nice(0) == base
    assert keys_of(make_loader(str(tmp_path / "00000.tar"), workers=1, worker_nice=7)) == \
        keys_of(make_loader(str(tmp_path / "00000.tar"), workers=1))  # the same batches
    with pytest.raises(ValueError, match="data.worker_nice"):
        DataConfig(worker_nice=20)
