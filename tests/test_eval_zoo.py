"""The dataset zoo: every entry's data files, names and aliases, `clipforge datasets`, and
`clipforge eval --dataset NAME --dataset-root ROOT` on sets written in CLIP_benchmark's layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cb_sets import classification_set, multilabel_set, retrieval_set
from clipforge.eval import dataset_zoo as zoo
from clipforge.eval.named import align_classnames, prompt_set, zoo_layout
from test_eval_data import CLASSES

# Class counts of the published lists (Kinetics-700: the paper's prompts.md lists 588 of its 700 classes).
PAPER_CLASSES = {
    "food101": 101, "cifar10": 10, "cifar100": 100, "birdsnap": 500, "sun397": 397, "cars": 196,
    "fgvc_aircraft": 100, "voc2007_multilabel": 20, "dtd": 47, "pets": 37, "caltech101": 102, "flowers": 102,
    "mnist": 10, "fer2013": 7, "stl10": 10, "eurosat": 10, "resisc45": 45, "gtsrb": 43, "kitti": 4,
    "country211": 211, "pcam": 2, "ucf101": 101, "kinetics700": 588, "clevr_counts": 8, "hateful_memes": 2,
    "renderedsst2": 2, "imagenet1k": 1000,
}
SHIFTS = {"imagenetv2": 1000, "imagenet_sketch": 1000, "imagenet-a": 200, "imagenet-r": 200, "objectnet": 113}


def test_paper_datasets_and_imagenet_shifts_with_their_class_counts():
    paper = [e for e in zoo.entries().values() if e.paper]
    assert sorted(e.name for e in paper) == sorted(PAPER_CLASSES) == sorted(zoo.collections()["paper"])
    for name, count in {**PAPER_CLASSES, **SHIFTS}.items():
        entry = zoo.get(name)
        assert entry.num_classes() == count, name
        templates = entry.templates()
        assert templates and all("{}" in t or "{c}" in t for t in templates), name
        names = [n.split(" | ")[0] for n in entry.classnames()]
        repeated = sorted({n for n in names if names.count(n) > 1})
        # OpenAI's published ImageNet names repeat two (classes 657/744 and 836/837); kept as published.
        assert repeated == (["missile", "sunglasses"] if entry.classnames_file == "imagenet1k" else []), name
        assert all(n.strip() for n in names), name
    assert len(zoo.get("imagenet1k").templates()) == 80 and len(zoo.get("cifar10").templates()) == 18
    assert zoo.get("fer2013").classnames()[3] == "happy | smiling"


def test_every_data_file_cites_its_source_and_every_entry_loads():
    for path in sorted((Path(zoo.HERE)).glob("*/*.txt")):
        header = [line for line in path.read_text().splitlines() if line.startswith("#")]
        assert any("Source:" in line or "Subset:" in line for line in header), path
    for entry in zoo.entries().values():
        entry.classnames(), entry.templates(), entry.subset()  # every referenced file exists and parses
        assert entry.task in zoo.TASKS and (entry.source is None or entry.source.startswith("clip-benchmark/wds_"))
    assert all(zoo.get(n) for members in zoo.collections().values() for n in members)


def test_label_subsets_map_into_imagenet():
    imagenet = zoo.get("imagenet1k").classnames()
    for name in ("imagenet-a", "imagenet-r"):
        entry = zoo.get(name)
        subset = entry.subset()
        assert len(subset) == 200 and all(len(s) == 1 for s in subset)
        assert [imagenet[s[0]] for s in subset] == list(entry.classnames())
        assert [s[0] for s in subset] == sorted(s[0] for s in subset)
    objectnet = zoo.get("objectnet").subset()
    assert len(objectnet) == 113 and sum(map(len, objectnet)) == 125
    alarm = zoo.get("objectnet").classnames().index("alarm clock")
    assert [imagenet[i] for i in objectnet[alarm]] == ["analog clock", "digital clock"]


def test_names_aliases_and_close_matches():
    assert zoo.get("wds/vtab/cifar10").name == "cifar10" and zoo.get("vtab-pets").name == "pets"
    assert zoo.get("imagenet").name == "imagenet1k" and zoo.get("WDS_IMAGENET-A").name == "imagenet-a"
    assert zoo.get("cifar10").cb_name == "vtab/cifar10" and zoo.get("cifar10").cleaned == "vtab-cifar10"
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar11'; did you mean cifar10, cifar100"):
        zoo.get("cifar11")
    names = [e.name for e in zoo.expand("imagenet_robustness,cifar10,imagenet1k")]
    assert names == ["imagenet1k", "imagenetv2", "imagenet_sketch", "imagenet-a", "imagenet-r", "objectnet", "cifar10"]


def test_class_names_are_aligned_to_the_set():
    ours = ("b thing", "a thing", "c")
    assert align_classnames(ours, ("a_Thing", "B thing", "C"), "x") == (
        ("a thing", "b thing", "c"), "the zoo's class names were reordered to the set's label order")
    assert align_classnames(ours, ("B_thing", "a thing", "c"), "x") == (ours, None)
    assert align_classnames(ours, ("x", "y", "c"), "x")[1] == "2 of 3 class names differ from the set's own; the zoo's are used in label order"
    with pytest.raises(ValueError, match="set x: the set has 2 classes but the zoo lists 3"):
        align_classnames(ours, ("a", "b"), "set x")
    names, prompts = prompt_set(("angry", "happy | smiling"), ("a {} face.",))
    assert names == ("angry", "happy") and prompts == {"angry": ["a angry face."], "happy": ["a happy face.", "a smiling face."]}


def test_datasets_command_lists_every_dataset_with_counts(capsys):
    from clipforge.cli import main

    assert main(["datasets"]) == 0
    table = capsys.readouterr().out
    for entry in zoo.entries().values():
        line = next(l for l in table.splitlines() if l.split()[:1] == [entry.name])
        count, templates = entry.num_classes(), entry.templates()
        assert line.split()[2] == ("-" if count is None else str(count))
        assert line.split()[3] == ("-" if templates is None else str(len(templates)))
    assert main(["datasets", "--json", "--paper"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert len(listing["datasets"]) == 27 and listing["collections"]["paper"][0] == "food101"


def _root(tmp_path: Path) -> Path:
    """A local root holding named sets in CLIP_benchmark's layout (folder names as in the HF repos)."""
    root = tmp_path / "root"
    classification_set(root / "wds_vtab-pcam", per_class=4, classes=CLASSES[:2], names=["lymph node", "tumour tissue"])
    multilabel_set(root / "voc2007_multilabel", classnames=zoo.get("voc2007_multilabel").classnames())
    retrieval_set(root / "wds_flickr8k")
    return root


def test_named_layout_uses_the_papers_prompts_or_the_sets(tmp_path):
    root = _root(tmp_path)
    layout, notes = zoo_layout("pcam,flickr8k", root, download=False, progress=False)
    assert list(layout.classification) == ["pcam"] and list(layout.retrieval) == ["flickr8k"]
    spec = layout.classification["pcam"]
    test, train = spec.load()
    assert test.classnames == zoo.get("pcam").classnames() and train is not None
    assert spec.templates == zoo.get("pcam").templates() and spec.templates_label == "pcam (the paper)"
    assert notes == {"pcam": "1 of 2 class names differ from the set's own; the zoo's are used in label order"}
    own, _ = zoo_layout("pcam", root, prompts="dataset", download=False, progress=False)
    assert own.classification["pcam"].load()[0].classnames == ("lymph node", "tumour tissue")
    assert own.classification["pcam"].templates == ("a photo of a {c}.", "a {c}.")
    with pytest.raises(FileNotFoundError, match=r"dataset cars: not found under .*looked for wds_cars, cars"):
        zoo_layout("cars", root, download=False, progress=False)
    with pytest.raises(ValueError, match="the zoo expects classification"):
        zoo_layout("cars", root / "wds_flickr8k", download=False, progress=False)


@pytest.mark.slow
def test_eval_by_name_with_a_local_root(tmp_path, capsys):
    import clipforge
    from clipforge.cli import main
    from test_eval_data import aligned_clip

    model, _, tokenizer = aligned_clip()
    clipforge.save(model, tmp_path / "model", tokenizer)
    root, out = _root(tmp_path), tmp_path / "out"
    code = main(["eval", str(tmp_path / "model"), "--dataset", "pcam,voc2007_multilabel,flickr8k", "--dataset-root",
                 str(root), "--out", str(out), "--quiet", "--no-cache", "--no-download"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["suite"] == ["zeroshot", "retrieval"]  # CLIP_benchmark's tasks for named sets by default
    assert set(report["zeroshot"]) == {"pcam", "voc2007_multilabel"} and "roc_auc" in report["zeroshot"]["pcam"]
    assert 0 < report["zeroshot"]["voc2007_multilabel"]["mean_average_precision"] <= 1
    files = sorted(p.name for p in (out / "clip_benchmark").iterdir())
    assert files == ["flickr8k_model_model_en_zeroshot_retrieval.json", "pcam_model_model_en_zeroshot_classification.json",
                     "voc2007_multilabel_model_model_en_zeroshot_classification.json"]
    record = json.loads((out / "clip_benchmark" / files[1]).read_text())
    assert set(record) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
    assert record["metrics"]["acc5"] is None and record["pretrained"] == str(tmp_path / "model")  # strict JSON: no NaN
    assert main(["eval", str(tmp_path / "model"), "--dataset", "cifar11", "--out", str(tmp_path / "bad")]) == 2
    assert "did you mean cifar10, cifar100" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_probe_predictions_restricted_to_a_shifted_sets_label_subset():
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from clipforge.eval.protocols import predict_in

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = rng.integers(0, 6, 60)  # base classes 0..5
    model = LogisticRegression(max_iter=200).fit(x, y)
    scores = model.decision_function(x)
    subset = ((4,), (1, 3), (5,))  # shifted class 0 = base 4, class 1 = base 1 or 3, class 2 = base 5
    expected = np.stack([scores[:, 4], scores[:, [1, 3]].max(axis=1), scores[:, 5]], axis=1).argmax(axis=1)
    assert np.array_equal(predict_in(model, x, subset), expected)
    assert np.array_equal(predict_in(model, x, None), model.predict(x))


@pytest.mark.slow
def test_robustness_of_imagenet_probes_on_subset_shifts(tmp_path):
    """ImageNet-A and ObjectNet by name: zero-shot with their own heads, probes trained on the
    1000-class base set scored through the subset mapping."""
    import numpy as np

    from cb_sets import encode, shape_images, write_meta, write_split
    from clipforge.eval import EvalConfig, FewShotConfig, run_suite
    from test_eval_data import aligned_clip

    a_subset = [s[0] for s in zoo.get("imagenet-a").subset()]
    base_labels = a_subset[:3]  # three ImageNet classes that ImageNet-A also has
    root = tmp_path / "root"
    for folder, entry, labels in (("wds_imagenet1k", "imagenet1k", base_labels),
                                  ("wds_imagenet-a", "imagenet-a", [0, 1, 2])):
        write_meta(root / folder, zoo.get(entry).classnames(), ["a photo of a {c}."])
        for split in ("test", "train") if entry == "imagenet1k" else ("test",):
            rows = [c for c in range(3) for _ in range(6)]
            images = shape_images(rows, seed=5 if split == "train" else 6, classes=CLASSES[:3])
            write_split(root / folder, split, [{"png": encode(im, "png"), "cls": labels[c]} for im, c in zip(images, rows)])
    (tmp_path / "one.txt").write_text("a photo of a {}.\n")
    layout, _ = zoo_layout("imagenet1k,imagenet-a", root, splits=("test", "train"), download=False, progress=False)
    assert layout.shift_groups() == {"imagenet1k": ["imagenet-a"]}
    model, preprocess, tokenizer = aligned_clip()
    config = EvalConfig(progress=False, plots=False, templates=str(tmp_path / "one.txt"),
                        few_shot=FewShotConfig(shots=(1, 2), seeds=1))
    report = run_suite(model, preprocess, tokenizer, layout, tmp_path / "out", "zeroshot,linear_probe,few_shot,robustness",
                       config, echo=None)
    result = report["robustness"]["imagenet1k"]
    assert result["shifted"] == ["imagenet-a"] and report["zeroshot"]["imagenet-a"]["num_classes"] == 200
    probe = result["classifiers"]["linear probe"]["shifted_accuracy"]["imagenet-a"]
    assert probe > 0.6 and np.isfinite(result["classifiers"]["zero-shot"]["effective_robustness"]["average_shifted"])
