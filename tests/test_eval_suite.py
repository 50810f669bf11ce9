"""The suite end to end with a real (random) CLIP model: files, numbers recomputed independently
the way CLIP_benchmark computes them, the CLI, and the synthetic world's layout."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import balanced_accuracy_score

from clipforge.eval import EvalConfig, FewShotConfig, OverlapConfig, discover, run_suite, zero_shot_accuracy
from clipforge.eval.datasets import load_classification_set, load_retrieval_set
from clipforge.eval.suite import choose_protocols
from clipforge.zeroshot import load_templates
from test_eval_data import aligned_clip, make_world

CONFIG = EvalConfig(
    templates="general",
    progress=False,
    few_shot=FewShotConfig(shots=(1, 4), seeds=1),
    overlap=OverlapConfig(max_train_images=40, calibration_images=20),
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), per_class=12, train_images=40)


@pytest.fixture(scope="module")
def clip():
    return aligned_clip()


@pytest.fixture(scope="module")
def run(world, clip, tmp_path_factory):
    out, printed = tmp_path_factory.mktemp("run"), []
    model, preprocess, tokenizer = clip
    report = run_suite(model, preprocess, tokenizer, world, out, config=CONFIG, model_name="tiny-vit", echo=printed.append)
    return report, out, printed[0]


def test_files_and_structure(run):
    report, out, printed = run
    assert report["suite"] == ["zeroshot", "linear_probe", "few_shot", "retrieval", "robustness", "overlap"]
    assert json.loads((out / "report.json").read_text()) == report
    markdown = (out / "report.md").read_text()
    for heading in ("## Classification", "## Linear probe", "## Few-shot", "## Retrieval", "## Robustness", "## Train/eval overlap"):
        assert heading in markdown
    assert "few_shot.png" in report["plots"] and "robustness_colour_shape.png" in report["plots"]
    for plot in report["plots"]:
        assert f"]({plot})" in markdown
        with Image.open(out / plot) as image:
            assert image.format == "PNG" and image.size[0] > 100
    assert "colour_shape_dark" in printed and "i2t@1" in printed and "robustness colour_shape" in printed
    assert report["zeroshot"]["shape"]["acc5"] is None  # 3 classes: no top-5 (NaN → null in JSON)
    assert report["template_sets"] == {"general": load_templates("general")}


def _clip_benchmark_zero_shot(model, preprocess, tokenizer, data, templates):
    """Zero-shot as CLIP_benchmark computes it: one class at a time, [D, C] weights, 100 × cosine."""
    with torch.no_grad():
        weights = []
        for name in data.classnames:
            emb = F.normalize(model.encode_text(tokenizer([t.format(c=name) if "{c}" in t else t.format(name) for t in templates])), dim=-1)
            weights.append(F.normalize(emb.mean(0), dim=0))
        weights = torch.stack(weights, dim=1)
        images = torch.stack([preprocess(Image.open(p)) for p in data.paths])
        logits = 100.0 * F.normalize(model.encode_image(images), dim=-1) @ weights
    target = torch.as_tensor(data.labels)
    top = logits.topk(min(5, logits.shape[1]), 1, True, True)[1].t()
    correct = top.eq(target.view(1, -1).expand_as(top))
    acc1 = correct[:1].reshape(-1).float().sum().item() / len(target)
    acc5 = correct[:5].reshape(-1).float().sum().item() / len(target) if logits.shape[1] >= 5 else float("nan")
    return acc1, acc5, balanced_accuracy_score(target, logits.argmax(1))


def test_zero_shot_equals_clip_benchmark_protocol(run, world, clip):
    report, _, _ = run
    for task in ("colour_shape", "shape"):
        data = load_classification_set(world / "eval" / task)
        acc1, acc5, mpc = _clip_benchmark_zero_shot(*clip, data, load_templates("general"))
        ours = report["zeroshot"][task]
        assert ours["acc1"] == pytest.approx(acc1, abs=1e-12)
        assert ours["mean_per_class_recall"] == pytest.approx(mpc, abs=1e-12)
        assert (ours["acc5"] is None and math.isnan(acc5)) or ours["acc5"] == pytest.approx(acc5, abs=1e-12)


def test_zero_shot_accuracy_entry_point(run, world, clip):
    report, _, _ = run
    model, preprocess, tokenizer = clip
    by_dir = zero_shot_accuracy(model, tokenizer, world / "eval" / "shape", templates="general")
    assert by_dir["acc1"] == report["zeroshot"]["shape"]["acc1"]
    data = load_classification_set(world / "eval" / "shape")
    images = torch.stack([preprocess(Image.open(p)) for p in data.paths])
    by_images = zero_shot_accuracy(model, tokenizer, (images, data.labels), classnames=data.classnames, templates="general")
    assert by_images["acc1"] == by_dir["acc1"] and by_images["n"] == len(data)
    with torch.no_grad():
        features = model.encode_image(images)
    by_features = zero_shot_accuracy(model, tokenizer, (features, data.labels), classnames=data.classnames,
                                     templates=["a photo of a {}."])
    assert 0 <= by_features["acc1"] <= 1
    with pytest.raises(ValueError, match="needs classnames"):
        zero_shot_accuracy(model, tokenizer, (features, data.labels))


def test_retrieval_equals_an_independent_computation(run, world, clip):
    report, _, _ = run
    model, preprocess, tokenizer = clip
    data = load_retrieval_set(world / "eval" / "retrieval")
    with torch.no_grad():
        images = F.normalize(model.encode_image(torch.stack([preprocess(Image.open(p)) for p in data.paths])), dim=-1)
        texts = F.normalize(model.encode_text(tokenizer(list(data.captions))), dim=-1)
    scores = (texts @ images.t()).numpy()  # [captions, images]
    for k in (1, 5, 10):
        t2i = np.mean([data.caption_image[t] in np.argsort(-scores[t])[:k] for t in range(len(scores))])
        i2t = np.mean([np.isin(np.argsort(-scores[:, i])[:k], np.flatnonzero(data.caption_image == i)).any()
                       for i in range(scores.shape[1])])
        assert report["retrieval"]["retrieval"][f"text_to_image_R@{k}"] == pytest.approx(t2i)
        assert report["retrieval"]["retrieval"][f"image_to_text_R@{k}"] == pytest.approx(i2t)
        assert report["retrieval"]["retrieval"]["clip_benchmark"][f"image_retrieval_recall@{k}"] == pytest.approx(t2i)


def test_probes_robustness_and_overlap_sections(run):
    report, _, _ = run
    probe = report["linear_probe"]["colour_shape"]
    assert 1e-6 <= probe["C"] <= 1e6 and probe["n_train"] + probe["n_val"] + probe["n_test"] == 72
    assert set(report["linear_probe"]) == {"colour_shape", "shape"}  # the shifted set is not probed
    few = report["few_shot"]["colour_shape"]
    assert [p["shots"] for p in few["points"]] == [1, 4] and all(len(p["accuracies"]) == 1 for p in few["points"])
    assert set(report["few_shot"]) == {"colour_shape"}  # by default only tasks with shifted sets
    robust = report["robustness"]["colour_shape"]
    assert robust["shifted"] == ["colour_shape_dark"] and robust["baselines"] == 1 + 2
    assert robust["classifiers"]["zero-shot"]["in_distribution_accuracy"] == pytest.approx(few["zero_shot_accuracy"])
    overlap = report["overlap"]
    assert overlap["pool"]["images"] == 40 and set(overlap["detectors"]) == {"embedding", "thumbnail"}
    for detector in overlap["detectors"].values():
        assert detector["calibration"]["n_duplicates"] == 20 and detector["calibration"]["recall"] >= 0.95
        for table in detector["tasks"].values():
            assert 0 <= table["overlap_fraction"] <= 1 and table["n"] in (72, 36)
    protocol = report["protocols"]["linear_probe"]
    assert protocol["c_start"] == [1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6] and protocol["steps_per_decade"] == 8


def test_protocol_choice_errors(world, tmp_path):
    layout = discover(world / "eval" / "shape")
    assert choose_protocols(None, layout, CONFIG)[0] == ["zeroshot", "linear_probe", "few_shot"]
    with pytest.raises(ValueError, match="unknown protocols"):
        choose_protocols("zeroshot,bogus", layout, CONFIG)
    with pytest.raises(ValueError, match="retrieval.*no retrieval set"):
        choose_protocols("retrieval", layout, CONFIG)


def test_cli(world, clip, tmp_path, capsys):
    import clipforge
    from clipforge.cli import main

    model, _, tokenizer = clip
    clipforge.save(model, tmp_path / "model", tokenizer=tokenizer)
    args = ["eval", str(tmp_path / "model"), "--data", str(world), "--out", str(tmp_path / "out"),
            "--suite", "zeroshot,retrieval", "--templates", "general", "--no-cache", "--quiet", "--no-plots"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "colour_shape" in printed and "report.md" in printed
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["suite"] == ["zeroshot", "retrieval"] and "plots" not in report
    assert main(args[:-5] + ["--suite", "retrieval", "--tasks", "nope"]) == 2
    assert "unknown tasks ['nope']" in capsys.readouterr().err


def test_synthetic_world_layout_and_suite(tmp_path, clip):
    synthetic = pytest.importorskip("clipforge.data.synthetic")
    root = tmp_path / "world"
    manifest = synthetic.generate_world(
        root, synthetic.WorldConfig(num_train=40, num_val=0, eval_per_class=6, num_retrieval=8, shard_size=20), workers=1
    )
    layout = discover(root)
    assert set(layout.classification) == {n for n, t in manifest["tasks"].items() if "classnames" in t}
    assert layout.shift_groups()["heldout"] == [n for n in manifest["tasks"] if n.startswith("heldout_shift")]
    model, preprocess, tokenizer = clip
    config = EvalConfig(progress=False, plots=False, tasks=("count", "colour", "heldout", "heldout_shift_noise"),
                        few_shot=FewShotConfig(shots=(1,), seeds=1))
    report = run_suite(model, preprocess, tokenizer, root, tmp_path / "out", "zeroshot,retrieval,robustness", config, echo=None)
    assert set(report["zeroshot"]) == {"count", "colour", "heldout", "heldout_shift_noise"}
    for task in ("count", "colour"):  # a list of templates; {class name: prompts}
        assert report["template_sets"][f"{task} (manifest)"] == manifest["tasks"][task]["templates"]
    assert report["robustness"]["heldout"]["shifted"] == ["heldout_shift_noise"]
    assert report["retrieval"]["retrieval"]["n_captions"] == 8 * manifest["tasks"]["retrieval"]["captions_per_image"]
