"""CLIP_benchmark's webdataset layout: reading it as written, its metrics, its errors, remote sets.

Sets are written here with webdataset's ShardWriter exactly as clip_benchmark's export does
(tests/cb_sets.py). Metric numbers are compared with CLIP_benchmark's own functions through
tests/fixtures/cb_reference.json (made by make_cb_reference.py with clip_benchmark installed).
"""

from __future__ import annotations

import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from cb_sets import classification_set, encode, multilabel_set, retrieval_set, shape_images, write_meta, write_split
from clipforge.eval import EvalConfig, run_suite, wds
from clipforge.eval.datasets import _read_image
from clipforge.eval.layout import discover
from clipforge.eval.metrics import average_precision_per_class, mean_average_precision
from clipforge.eval.retrieval import score_retrieval
from test_eval_data import CLASSES, aligned_clip

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "cb_reference.json").read_text())
CONFIG = EvalConfig(progress=False, plots=False)


@pytest.fixture(scope="module")
def clip():
    return aligned_clip()


def test_classification_set_is_read_as_written(tmp_path):
    root = classification_set(tmp_path / "set", per_class=3, max_count=5)
    info = wds.read_info(root)
    assert info.kind == "classification" and info.splits == ("test", "train")
    assert info.classnames == tuple(f"{c} {s}" for c, s in CLASSES) and info.templates == ("a photo of a {c}.", "a {c}.")
    data = wds.load_classification(root, "test", "set", info=info)
    assert (root / "test" / "nshards.txt").read_text().strip() == "4"  # 18 samples, 5 per shard
    assert data.labels.tolist() == [c for c in range(len(CLASSES)) for _ in range(3)]
    expected = shape_images(data.labels.tolist(), seed=1)
    for member, image in zip(data.paths, expected):  # lossless webp: the very pixels written
        assert np.array_equal(np.asarray(_read_image(member)), np.asarray(image))
    assert not data.skipped


def test_multilabel_and_retrieval_sets(tmp_path):
    root, targets = multilabel_set(tmp_path / "multi")
    data = wds.load_classification(root, "test", "multi")
    assert data.multilabel and np.array_equal(data.labels, targets)
    root, captions = retrieval_set(tmp_path / "caps")
    retrieval = wds.load_retrieval(root, "test", "caps")
    assert len(retrieval.paths) == len(captions)
    assert list(retrieval.captions) == [c for lines in captions for c in lines]
    assert retrieval.caption_image.tolist() == [i for i, lines in enumerate(captions) for _ in lines]
    layout = discover(tmp_path)
    assert list(layout.classification) == ["multi"] and list(layout.retrieval) == ["caps"]


def test_average_precision_equals_clip_benchmark():
    ref = REFERENCE["multilabel"]
    ours = average_precision_per_class(torch.tensor(ref["scores"]), torch.tensor(ref["targets"]))
    np.testing.assert_allclose(ours.numpy(), ref["average_precision"], rtol=0, atol=1e-7)
    assert ours[5] == 0  # a class without positives counts as 0, as in CLIP_benchmark
    assert mean_average_precision(torch.tensor(ref["scores"]), torch.tensor(ref["targets"])) == pytest.approx(
        ref["mean_average_precision"], abs=1e-7)


def test_retrieval_recalls_equal_clip_benchmark():
    ref = REFERENCE["retrieval"]
    result = score_retrieval(torch.tensor(ref["images"]), torch.tensor(ref["texts"]), ref["text_image"])
    for k in (1, 5, 10):
        for name in (f"image_retrieval_recall@{k}", f"text_retrieval_recall@{k}"):
            assert result["clip_benchmark"][name] == pytest.approx(ref[name], abs=1e-6)


@pytest.mark.slow
def test_same_images_as_imagefolder_and_as_webdataset_give_equal_numbers(tmp_path, clip):
    """The wds reader feeds the very pixels an ImageFolder does: every metric is equal."""
    labels = [c for c in range(len(CLASSES)) for _ in range(5)]
    images = shape_images(labels, seed=7)
    folder = tmp_path / "folder" / "shapes"
    for i, (image, c) in enumerate(zip(images, labels)):
        (folder / f"{c:02d}").mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{c:02d}" / f"{i:03d}.png")
    (folder / "classnames.json").write_text(json.dumps([f"{c} {s}" for c, s in CLASSES]))
    root = tmp_path / "wds" / "shapes"
    write_meta(root, [f"{c} {s}" for c, s in CLASSES], ["a photo of a {c}."])
    write_split(root, "test", [{"png": encode(im, "png"), "cls": c} for im, c in zip(images, labels)], max_count=7)
    b = run_suite(*clip, root, tmp_path / "b", "zeroshot,linear_probe", CONFIG, echo=None)
    assert b["template_sets"] == {"shapes (zeroshot_classification_templates.txt)": ["a photo of a {c}."]}
    c = run_suite(*clip, folder, tmp_path / "c", "zeroshot,linear_probe",
                  EvalConfig(progress=False, plots=False, templates=str(_templates(tmp_path))), echo=None)
    assert 0.3 < b["zeroshot"]["shapes"]["acc1"] < 1  # a model whose predictions vary with the image
    for key in ("acc1", "acc5", "mean_per_class_recall", "per_class_recall", "n"):
        assert b["zeroshot"]["shapes"][key] == c["zeroshot"]["shapes"][key]
    assert b["linear_probe"]["shapes"]["test_accuracy"] == c["linear_probe"]["shapes"]["test_accuracy"]
    assert b["zeroshot"]["shapes"]["n"] == len(labels)
    # The report's example images: in a shard they are found by offset, and decode to the same picture.
    from clipforge.eval.html_report import example_grid_images

    shard_examples, file_examples = b["zeroshot"]["shapes"]["examples"], c["zeroshot"]["shapes"]["examples"]
    assert all(isinstance(e["image"], dict) for e in shard_examples) and len(shard_examples) == 2 * len(CLASSES)
    assert [e["top"] for e in shard_examples] == [e["top"] for e in file_examples]
    decoded = [example_grid_images(r, "shapes") for r in (b, c)]
    assert len(decoded[0]) == len(decoded[1]) == len(shard_examples)
    assert [np.asarray(i).tolist() for i in decoded[0]] == [np.asarray(i).tolist() for i in decoded[1]]


def _templates(tmp_path: Path) -> Path:
    path = tmp_path / "templates.txt"
    path.write_text("a photo of a {c}.\n")
    return path


def test_undecodable_images_are_skipped_counted_and_bounded(tmp_path, clip):
    root = tmp_path / "set"
    write_meta(root, [f"{c} {s}" for c, s in CLASSES[:2]], ["a photo of a {c}."])
    images = shape_images([0, 1] * 50, seed=2)
    samples = [{"png": encode(im, "png"), "cls": i % 2} for i, im in enumerate(images)]
    samples[3]["png"] = b"\x89PNG\r\n\x1a\nnot really a png"
    samples[8] = {"cls": 0}  # no image at all
    write_split(root, "test", samples, max_count=40)
    report = run_suite(*clip, root, tmp_path / "out", "zeroshot", EvalConfig(progress=False, plots=False,
                                                                            max_skipped_fraction=0.05), echo=None)
    skipped = report["skipped_images"]["set"]
    assert skipped["count"] == 2 and report["zeroshot"]["set"]["n"] == 98
    assert {e["reason"].split(":")[0] for e in skipped["examples"]} == {"missing_image", "corrupt_image"}
    with pytest.raises(ValueError, match=r"set set: 2 of 100 images unreadable, more than 1%"):
        run_suite(*clip, root, tmp_path / "strict", "zeroshot", CONFIG, echo=None)
    assert not (tmp_path / "strict").exists()  # nothing half-written when a run fails


def test_bad_sets_name_the_file_and_the_problem(tmp_path):
    root = classification_set(tmp_path / "set", per_class=2, train=False, max_count=4)
    (root / "test" / "nshards.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"set/test/nshards.txt: missing"):
        wds.load_classification(root, "test", "set")
    (root / "test" / "nshards.txt").write_text("5\n")
    with pytest.raises(FileNotFoundError, match=r"shard 3.tar is missing \(2 of the 5"):
        wds.load_classification(root, "test", "set")
    (root / "test" / "nshards.txt").write_text("three\n")
    with pytest.raises(ValueError, match="expected the number of shards"):
        wds.load_classification(root, "test", "set")
    (root / "test" / "nshards.txt").write_text("3\n")
    (root / "classnames.txt").write_text("red square\ngreen circle\n")  # labels go up to 5
    with pytest.raises(ValueError, match=r"test/1.tar: sample s0000004 has label 2, outside the 2 classes of .*classnames.txt"):
        wds.load_classification(root, "test", "set")
    (root / "dataset_type.txt").write_text("detection\n")
    with pytest.raises(ValueError, match="dataset_type.txt: dataset type 'detection'"):
        wds.read_info(root)
    multi, _ = multilabel_set(tmp_path / "multi")
    (multi / "classnames.txt").write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match=r"\.npy labels have \[6\] entries but .*classnames.txt has 3 classes"):
        wds.load_classification(multi, "test", "multi")


def test_a_truncated_shard_keeps_what_came_before(tmp_path):
    root = classification_set(tmp_path / "set", per_class=2, train=False, max_count=12)
    shard = root / "test" / "0.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) * 2 // 3])
    result = wds.load_classification(root, "test", "set")
    assert 0 < len(result) < 12 and result.skipped and "truncated_shard" in result.skipped[0]["reason"]


class _Quiet(SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    _Quiet.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.slow
def test_http_and_hugging_face_sources_are_mirrored_and_resumed(tmp_path, server, monkeypatch):
    from clipforge.eval import dataset_zoo as zoo, fetch

    served, url = server
    hf = served / "datasets" / "clip-benchmark" / "wds_vtab-pcam" / "resolve" / "main"
    classification_set(hf, per_class=3, classes=CLASSES[:2], names=["lymph node", "tumor"], max_count=2)
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "cache"))
    local = zoo.locate(zoo.get("pcam"), splits=("test",), progress=False)
    assert local == tmp_path / "cache" / "datasets" / "datasets_clip-benchmark_wds_vtab-pcam"
    assert sorted(p.name for p in (local / "test").iterdir()) == ["0.tar", "1.tar", "2.tar", "nshards.txt"]
    assert not (local / "train").exists()  # only the splits asked for
    (local / "test" / "1.tar").unlink()  # an interrupted mirror resumes at the missing shard
    _Quiet.requests = []
    zoo.locate(zoo.get("pcam"), splits=("test",), progress=False)
    assert _Quiet.requests == ["/datasets/clip-benchmark/wds_vtab-pcam/resolve/main/test/1.tar"]
    assert wds.load_classification(local, "test", "pcam").labels.tolist() == [0, 0, 0, 1, 1, 1]
    # A plain URL root, with CLIP_benchmark's placeholder, works the same way.
    plain = fetch.mirror(f"{url}/datasets/clip-benchmark/wds_vtab-pcam/resolve/main", ("test", "train"), progress=False)
    assert (plain / "train" / "nshards.txt").is_file() and (plain / "classnames.txt").read_text() == "lymph node\ntumor\n"
    with pytest.raises(fetch.FetchError, match=r"no split 'val'"):
        fetch.mirror(f"{url}/datasets/clip-benchmark/wds_vtab-pcam/resolve/main", ("val",), progress=False)
    assert not list(plain.rglob("*.part"))  # no partial file left behind


def _imagenet_style(folder, name: str, labels, seed: int) -> None:
    """A tar of ``<key>.jpg`` + ``<key>.cls`` written with tarfile (no nshards.txt, no CB metadata)."""
    import io
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / name, "w") as tar:
        for i, (image, c) in enumerate(zip(shape_images(labels, seed), labels)):
            for ext, data in (("jpg", encode(image, "jpg")), ("cls", str(c).encode())):
                info = tarfile.TarInfo(f"img_{seed}_{i:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.mark.slow
def test_imagenet_style_shards_probe_and_zero_shot_without_conversion(tmp_path, clip, capsys):
    import clipforge
    from clipforge.cli import main

    shards = tmp_path / "shards"
    labels = [c for c in range(len(CLASSES)) for _ in range(4)]
    for i in range(2):
        _imagenet_style(shards, f"train-{i:04d}.tar", labels, seed=10 + i)
    _imagenet_style(shards, "val-0000.tar", labels, seed=20)
    model, _, tokenizer = clip
    clipforge.save(model, tmp_path / "model", tokenizer)
    args = ["eval", str(tmp_path / "model"), "--data", str(shards / "val-{0000..0000}.tar"), "--train-data",
            str(shards / "train-{0000..0001}.tar"), "--suite", "zeroshot,linear_probe", "--out", str(tmp_path / "out"),
            "--quiet", "--no-cache", "--no-plots"]
    assert main(args) == 2 and "no class names; pass --classnames FILE" in capsys.readouterr().err
    (shards / "classnames.txt").write_text("\n".join(f"{c} {s}" for c, s in CLASSES) + "\n")
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["zeroshot"]["shards"]["n"] == len(labels) and report["zeroshot"]["shards"]["acc1"] > 0.3
    probe = report["linear_probe"]["shards"]
    assert probe["split"] == "train and test splits" and probe["n_train"] + probe["n_val"] == 2 * len(labels)
