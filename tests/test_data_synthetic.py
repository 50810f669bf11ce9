"""The synthetic world: layout contract, held-out compositions, captions, determinism, loading."""

from __future__ import annotations

import csv
import hashlib
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from test_data_common import toy_tokenizer

from clipforge.cli import main as cli_main
from clipforge.data.captions import _COLOUR_SYNONYMS, _SHAPE_SYNONYMS, caption_length
from clipforge.data.loader import DataConfig, build_loader
from clipforge.data.render import COLOURS, SHAPES
from clipforge.data.synthetic import WorldConfig, generate_world
from clipforge.data.world_eval import EVAL_TASKS

SMALL = WorldConfig(seed=5, num_train=400, num_val=50, shard_size=100, eval_per_class=4, num_retrieval=10,
                    colour_only_captions=0.1, shape_only_captions=0.2)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("world")
    return out, generate_world(out, SMALL, workers=1)  # in process (the worker pool: test_deterministic_by_seed...)


def samples(folder: Path) -> list[dict]:
    """Every sample's members from the shards of a split: {"key", "jpg", "txt", "json"}."""
    out = []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            by_key: dict[str, dict] = {}
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                by_key.setdefault(key, {"key": key})[ext] = tar.extractfile(m).read()
            out += by_key.values()
    return out


def test_layout_and_manifest(world):
    out, manifest = world
    assert json.loads((out / "manifest.json").read_text())["splits"] == manifest["splits"]
    sizes = json.loads((out / "train" / "sizes.json").read_text())
    assert sizes == {f"{i:05d}.tar": 100 for i in range(4)}
    assert manifest["splits"]["train"]["shards"] == "train/{00000..00003}.tar"
    assert len((out / "train" / "captions.txt").read_text().splitlines()) == 400
    assert json.loads((out / "val" / "sizes.json").read_text()) == {"00000.tar": 50}
    assert set(manifest["tasks"]) == set(EVAL_TASKS) | {"retrieval"}
    for task, (base, shift) in EVAL_TASKS.items():
        entry = manifest["tasks"][task]
        names = json.loads((out / "eval" / task / "classnames.json").read_text())
        assert names == entry["classnames"] == manifest["tasks"][base]["classnames"]
        folders = sorted(p.name for p in (out / "eval" / task).iterdir() if p.is_dir())
        assert folders == entry["folders"] and len(folders) == len(names)  # sorted folders = class order
        assert all(len(list((out / "eval" / task / f).glob("*.png"))) == 4 for f in folders)
        assert entry["shift"] == shift and entry["templates"] == manifest["tasks"][base]["templates"]
        if base not in ("colour", "shape"):
            assert "{}" in entry["templates"][0]
    assert len(manifest["tasks"]["shape"]["classnames"]) == 6 and len(manifest["tasks"]["colour"]["classnames"]) == 8
    captions = json.loads((out / "eval" / "retrieval" / "captions.json").read_text())
    assert len(captions) == 10 and all(len(set(c)) == 5 for c in captions.values())
    assert all((out / "eval" / "retrieval" / name).is_file() for name in captions)


def test_colour_and_shape_prompts_name_both_attributes_as_captions_do(world):
    tasks = world[1]["tasks"]
    templates = tasks["heldout"]["templates"]
    colour, shape = tasks["colour"]["templates"], tasks["shape"]["templates"]
    assert list(colour) == tasks["colour"]["classnames"] and list(shape) == tasks["shape"]["classnames"]
    for name, c in zip(colour, COLOURS):
        assert name == f"{c} object" and colour[name] == [t.format(f"{c} {s}") for t in templates for s in SHAPES]
    for s in SHAPES:
        assert shape[s] == [t.format(f"{c} {s}") for t in templates for c in COLOURS]


def test_group_attributes_and_hierarchy_beside_the_tasks(world):
    out, manifest = world
    for task, (base, shift) in EVAL_TASKS.items():
        with open(out / "eval" / task / "groups.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        images = sorted(p.relative_to(out / "eval" / task).as_posix() for p in (out / "eval" / task).rglob("*.png"))
        assert sorted(r["image"] for r in rows) == images  # every image once
        sizes, tones = {r["size"] for r in rows}, {r["tone"] for r in rows}
        assert sizes <= ({"small", "large", "mixed"} if base == "count" else {"small", "large"})
        assert tones <= ({"patterned"} if shift == "background" else {"light", "dark"})
        assert {r["background"] for r in rows} <= ({"stripes", "checker"} if shift == "background" else {"plain", "gradient"})
        assert (out / "eval" / task / "hierarchy.json").is_file() == (base == "heldout")
    hierarchy = json.loads((out / "eval" / "heldout" / "hierarchy.json").read_text())
    assert hierarchy == {f"{c} {s}": s for c, s in manifest["heldout_pairs"]}


def test_heldout_pairs_need_both_attributes_and_never_appear_in_training(world):
    out, manifest = world
    pairs = [tuple(p) for p in manifest["heldout_pairs"]]
    assert len(pairs) == len(set(pairs)) == 8
    assert min(Counter(c for c, _ in pairs).values()) >= 2 and min(Counter(s for _, s in pairs).values()) >= 2
    assert manifest["tasks"]["heldout"]["classnames"] == [f"{c} {s}" for c, s in pairs]
    for split in ("train", "val"):
        for sample in samples(out / split):
            meta = json.loads(sample["json"])
            assert all((o["colour"], o["shape"]) not in pairs for o in meta["objects"])


def test_captions_name_every_object_and_vary(world):
    out, _ = world
    train = samples(out / "train")
    counts, shapes, colours, positions, backgrounds = Counter(), set(), set(), set(), set()
    partial = Counter()  # (names the colour, names the shape) of single-object captions
    for sample in train:
        caption, meta = sample["txt"].decode(), json.loads(sample["json"])
        assert meta["caption"] == caption and caption_length(caption) <= 28  # fits a 32-token context
        for obj in meta["objects"]:
            named_colour = any(w in caption for w in (obj["colour"], *_COLOUR_SYNONYMS.get(obj["colour"], ())))
            named_shape = any(w in caption for w in (obj["shape"], *_SHAPE_SYNONYMS.get(obj["shape"], ())))
            if len(meta["objects"]) > 1:  # several objects: each is named by colour and shape
                assert named_colour and named_shape, caption
            else:  # one object: sometimes by its colour alone or its shape alone
                assert named_colour or named_shape, caption
                partial[(named_colour, named_shape)] += 1
            shapes.add(obj["shape"]), colours.add(obj["colour"]), positions.add(obj["position"])
        counts[len(meta["objects"])] += 1
        backgrounds.add((meta["background"]["kind"], meta["background"]["tone"]))
        assert sample["jpg"][:3] == b"\xff\xd8\xff"
    assert len(shapes) == 6 and len(colours) == 8 and len(positions) == 9 and len(backgrounds) == 4
    assert set(counts) == {1, 2, 3} and counts[1] > counts[2] > counts[3]  # mostly single objects
    assert len({s["txt"] for s in train}) > 0.9 * len(train)
    single = counts[1]
    assert abs(partial[True, False] / single - SMALL.colour_only_captions) < 0.05, partial
    assert abs(partial[False, True] / single - SMALL.shape_only_captions) < 0.05, partial
    frames = Counter(s["txt"].decode().split()[0] for s in train)
    assert len(frames) >= 8  # many sentence shapes, not one template


@pytest.mark.slow
def test_deterministic_by_seed_whatever_the_worker_count(tmp_path):
    config = WorldConfig(seed=1, num_train=30, num_val=0, shard_size=16, eval_per_class=1, num_retrieval=2)

    def digest(folder: Path) -> dict[str, str]:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"}

    generate_world(tmp_path / "a", config, workers=1)
    generate_world(tmp_path / "b", config, workers=2)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    generate_world(tmp_path / "c", WorldConfig(**{**config.__dict__, "seed": 2}), workers=1)
    assert (tmp_path / "a" / "train" / "00000.tar").read_bytes() != (tmp_path / "c" / "train" / "00000.tar").read_bytes()


@pytest.mark.slow
def test_world_trains_through_the_loader_and_webdataset(world):
    out, manifest = world
    from clipforge.transforms import train_transform

    spec = str(out / manifest["splits"]["train"]["shards"])
    loader = build_loader(DataConfig(shards=spec, batch_size=32, workers=2), train_transform(64), toy_tokenizer)
    batch = next(iter(loader))
    images, tokens = batch
    assert images.shape == (32, 3, 64, 64) and tokens.shape == (32, 12)
    assert loader.num_batches == 14  # 2 workers x ceil(200 / 32)
    import webdataset as wds

    first = next(iter(wds.WebDataset(spec, shardshuffle=False).decode("pil")))
    assert first["jpg"].size == (64, 64) and isinstance(first["txt"], str)


@pytest.mark.parametrize("colour, shape", [(-0.1, 0.0), (0.6, 0.5)])
def test_partial_caption_rates_are_checked(colour, shape):
    with pytest.raises(ValueError, match="colour_only_captions and shape_only_captions"):
        WorldConfig(colour_only_captions=colour, shape_only_captions=shape)


def test_synth_cli(tmp_path, capsys):
    args = ["data", "synth", "--out", str(tmp_path), "--num-train", "20", "--num-val", "0", "--shard-size", "10",
            "--eval-per-class", "1", "--num-retrieval", "1", "--format", "png", "--workers", "1"]
    assert cli_main(args) == 0
    assert "wrote 20 training samples" in capsys.readouterr().out
    with tarfile.open(tmp_path / "train" / "00001.tar") as tar:
        assert sorted(tar.getnames())[:3] == ["000000010.json", "000000010.png", "000000010.txt"]
