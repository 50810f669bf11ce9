"""Sources: brace expansion, counts, tar grouping and breakage, pipe:/fsspec URLs, CSV, folders, convert."""

from __future__ import annotations

import pytest

import csv
import json
from pathlib import Path

from test_data_common import good_members, jpeg_bytes, make_shards, write_tar

from clipforge.cli import main as cli_main
from clipforge.data.sources import RawSample, ShardFailure, expand_urls, iter_shard, list_shards


def test_expand_urls():
    assert expand_urls("d/{000..002}.tar") == ["d/000.tar", "d/001.tar", "d/002.tar"]
    assert expand_urls("a/{0..1}.tar::b/x.tar") == ["a/0.tar", "a/1.tar", "b/x.tar"]
    assert expand_urls(["a.tar", "b/{1,3}.tar"]) == ["a.tar", "b/1.tar", "b/3.tar"]


def test_counts_from_sizes_file_stats_file_or_scan(tmp_path):
    make_shards(tmp_path / "a", [3, 5])
    refs = list_shards(str(tmp_path / "a" / "{00000..00001}.tar"))
    assert [(r.name, r.count) for r in refs] == [("00000.tar", 3), ("00001.tar", 5)]
    make_shards(tmp_path / "b", [4, 2], with_counts=False)  # no count file: tar headers are scanned
    (tmp_path / "b" / "00001_stats.json").write_text(json.dumps({"successes": 7}))  # img2dataset's
    assert [r.count for r in list_shards(str(tmp_path / "b" / "{00000..00001}.tar"))] == [4, 7]


@pytest.mark.slow
def test_tar_grouping_pipe_and_fsspec_urls(tmp_path):
    make_shards(tmp_path, [4])
    path = tmp_path / "00000.tar"
    for url in (str(path), f"file://{path}", f"pipe:cat {path}"):
        items = list(iter_shard(list_shards(url)[0]))
        assert [i.key for i in items] == ["0000000", "0000001", "0000002", "0000003"], url
        assert set(items[0].files) == {"jpg", "txt", "json"}
    import fsspec

    with fsspec.open("memory://shards/00000.tar", "wb") as f:
        f.write(path.read_bytes())
    assert len(list(iter_shard(list_shards("memory://shards/00000.tar", "wds")[0]))) == 4


def test_failing_pipe_is_a_shard_failure(tmp_path):
    items = list(iter_shard(list_shards("pipe:exit 3", "wds")[0]))
    assert len(items) == 1 and isinstance(items[0], ShardFailure)


def test_truncated_tar_keeps_samples_before_the_cut(tmp_path):
    members = [m for i in range(5) for m in good_members(f"k{i}", i)]
    offsets = write_tar(tmp_path / "t.tar", members)
    data = (tmp_path / "t.tar").read_bytes()
    cut = offsets[7] + 10  # inside k2.txt (members in order: k0.jpg k0.txt k0.json k1.jpg ...)
    (tmp_path / "t.tar").write_bytes(data[:cut])
    items = list(iter_shard(list_shards(str(tmp_path / "t.tar"))[0]))
    samples = [i for i in items if isinstance(i, RawSample)]
    assert [s.key for s in samples] == ["k0", "k1", "k2"]
    assert samples[2].flaw == "truncated_shard" and samples[0].flaw is None
    assert isinstance(items[-1], ShardFailure) and items[-1].samples_read == 3
    # Cut exactly between members: tar sees a clean end; the count file exposes the shortfall.
    (tmp_path / "t.tar").write_bytes(data[: offsets[6] - 512])
    (tmp_path / "sizes.json").write_text(json.dumps({"t.tar": 5}))
    items = list(iter_shard(list_shards(str(tmp_path / "t.tar"))[0]))
    assert isinstance(items[-1], ShardFailure) and "ended after 2 of 5" in items[-1].error


def _images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.jpg"
        p.write_bytes(jpeg_bytes(i))
        paths.append(p)
    return paths


def test_csv_and_folder_sources(tmp_path):
    paths = _images(tmp_path / "imgs", 5)
    with open(tmp_path / "pairs.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["filepath", "title"])
        for i, p in enumerate(paths):
            w.writerow([f"imgs/{p.name}", f"caption {i}"])
    refs = list_shards(str(tmp_path / "pairs.tsv"), rows_per_shard=2)
    assert [r.count for r in refs] == [2, 2, 1] and refs[0].kind == "csv"
    first = next(iter_shard(refs[0]))
    assert first.files["txt"] == b"caption 0" and Path(first.files["jpg"].path) == paths[0].resolve()
    for i, p in enumerate(paths[:3]):
        p.with_suffix(".txt").write_text(f"folder caption {i}")
    refs = list_shards(str(tmp_path / "imgs"))
    items = list(iter_shard(refs[0]))
    assert refs[0].kind == "folder" and [("txt" in i.files) for i in items] == [True] * 3 + [False] * 2


def test_convert_csv_and_folder_cli(tmp_path, capsys):
    paths = _images(tmp_path / "imgs", 6)
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for i, p in enumerate(paths):
            w.writerow([f"imgs/{p.name}", f"photo number {i}" if i != 2 else ""])
        w.writerow(["imgs/missing.jpg", "gone"])
    assert cli_main(["data", "convert", "--csv", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "s"),
                     "--shard-size", "4"]) == 0
    sizes = json.loads((tmp_path / "s" / "sizes.json").read_text())
    assert sizes == {"00000.tar": 4, "00001.tar": 1}
    report = json.loads((tmp_path / "s" / "convert_report.json").read_text())
    assert report["by_reason"] == {"empty_caption": 1, "missing_image": 1}
    import webdataset as wds  # the shards are plain webdataset shards

    keys = [s["__key__"] for s in wds.WebDataset(str(tmp_path / "s" / "{00000..00001}.tar"), shardshuffle=False)]
    assert keys == ["000000000", "000000001", "000000003", "000000004", "000000005"]
    for p in paths:
        p.with_suffix(".txt").write_text(f"about {p.stem}")
    assert cli_main(["data", "convert", "--folder", str(tmp_path / "imgs"), "--out", str(tmp_path / "f")]) == 0
    assert json.loads((tmp_path / "f" / "sizes.json").read_text()) == {"00000.tar": 6}
    assert cli_main(["data", "check", str(tmp_path / "f" / "00000.tar"), "--report", str(tmp_path / "r.json")]) == 0
    assert "6 samples: 6 good, 0 bad" in capsys.readouterr().out


def test_check_cli_lists_bad_samples_and_writes_sizes(tmp_path, capsys):
    from test_data_common import bad_shard

    bad = bad_shard(tmp_path / "00000.tar")
    write_tar(tmp_path / "00001.tar", good_members("good1", 9) + good_members("other", 10))  # good1 again
    spec = str(tmp_path / "{00000..00001}.tar")
    assert cli_main(["data", "check", spec, "--report", str(tmp_path / "r.json"), "--write-sizes"]) == 1
    report = json.loads((tmp_path / "r.json").read_text())
    listed = {(s["shard"], s["key"]): s["reason"] for s in report["samples"]}
    assert listed == {**{("00000.tar", k): r for k, r in bad.items()}, ("00001.tar", "good1"): "duplicate_key"}
    assert json.loads((tmp_path / "sizes.json").read_text()) == {"00000.tar": 14, "00001.tar": 2}
    assert "broken shards" in capsys.readouterr().out
