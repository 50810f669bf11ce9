"""The paper's further analyses end to end on the synthetic world: three demo-size models of growing
width trained from scratch (seconds each), the suite with every analysis on the widest, and each
section's numbers recomputed independently of the protocol code; the CLI with a model series."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats as sps

import clipforge
from clipforge.eval import EvalConfig, FewShotConfig, run_suite
from clipforge.eval.analyses import ANALYSES, AnalysisConfig, ScalingConfig
from clipforge.eval.analyses.common import FALLBACK_TEMPLATE
from clipforge.eval.datasets import load_classification_set
from clipforge.zeroshot import build_classifier, zero_shot_logits

pytestmark = pytest.mark.slow

WIDTHS = (8, 16, 32)
STEPS, BATCH = 30, 64
BIAS_LABELS = {"harmful": {"size words": ["tiny object", "little object"], "odd": ["blob"]}, "added": ["small shape"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(world, {width: final model dir}): a 32 px world and three widths of the demo model, 30 steps each."""
    from clipforge.commands.demo import recipe_path
    from clipforge.data.synthetic import WorldConfig, generate_world
    from clipforge.train.config import load_config
    from clipforge.train.distributed import destroy_distributed
    from clipforge.train.loop import Trainer

    root, threads = tmp_path_factory.mktemp("analyses"), torch.get_num_threads()
    world = root / "world"
    generate_world(world, WorldConfig(image_size=32, num_train=1500, num_val=0, shard_size=500, eval_per_class=10,
                                      num_retrieval=4), workers=1)
    shards = "::".join(str(p) for p in sorted((world / "train").glob("*.tar")))
    models = {}
    try:
        for width in WIDTHS:
            overrides = {"run.out": str(root / f"w{width}"), "data.shards": shards, "data.workers": 0,
                         "tokenizer.captions": str(world / "train" / "captions.txt"), "tokenizer.vocab_size": 1024,
                         "run.steps": STEPS, "run.max_seconds": "none", "run.threads": 1, "data.batch_size": BATCH,
                         "schedule.warmup_steps": 5, "checkpoint.every": 0, "log.every": 100, "eval.every": 0,
                         "model.vision.width": width, "model.vision.image_size": 32, "model.text.width": 64,
                         "model.text.layers": 2}
            Trainer(load_config(recipe_path(None), overrides), echo=lambda message: None).train()
            models[width] = root / f"w{width}" / "final"
    finally:
        destroy_distributed()
        torch.set_num_threads(threads)
    (world / "eval" / "shape" / "bias_labels.json").write_text(json.dumps(BIAS_LABELS))
    return world, models


@pytest.fixture(scope="module")
def run(trained, tmp_path_factory):
    world, models = trained
    model, preprocess, tokenizer = clipforge.load(models[32])
    series = ScalingConfig(series=tuple(str(models[w]) for w in WIDTHS[:-1]), model=str(models[32]))
    config = EvalConfig(progress=False, few_shot=FewShotConfig(shots=(1,), seeds=1), analyses=AnalysisConfig(scaling=series))
    out = tmp_path_factory.mktemp("report")
    report = run_suite(model, preprocess, tokenizer, world, out, ",".join(("zeroshot", "linear_probe", *ANALYSES)),
                       config, echo=None)
    return report, out, (model, preprocess, tokenizer)


def _logits(clip, world, task, labels, templates):
    """Zero-shot logits [N, len(labels)] computed here, image by image (no suite code)."""
    model, preprocess, tokenizer = clip
    data = load_classification_set(world / "eval" / task)
    if isinstance(templates, dict):  # per-class prompts; an added label gets the fallback prompt
        templates = {label: templates.get(label) or [FALLBACK_TEMPLATE.format(label)] for label in labels}
    head = build_classifier(model, tokenizer, labels, templates)
    with torch.no_grad():
        features = model.encode_image(torch.stack([preprocess(Image.open(p)) for p in data.paths]))
    return zero_shot_logits(features, head).numpy(), data


def test_every_analysis_has_a_section_and_a_plot(run):
    report, out, _ = run
    markdown = (out / "report.md").read_text()
    for name, heading in zip(ANALYSES, ("## Bias probe", "## Coarse and fine", "## Scaling", "## Zero-shot vs linear probe",
                                        "## Adaptation")):
        assert report[name] and heading in markdown
    for plot in ("bias_shape.png", "close_answers.png", "class_count.png", "scaling.png", "zs_vs_probe.png",
                 "adaptation_shape.png", "adaptation_heldout.png"):
        assert plot in report["plots"] and f"]({plot})" in markdown
        with Image.open(out / plot) as image:
            assert image.format == "PNG" and image.size[0] > 300
    assert json.loads((out / "report.json").read_text())["bias"] == report["bias"]


def test_bias_rates_equal_an_independent_computation(run, trained):
    report, _, clip = run
    world, _ = trained
    r = report["bias"]["tasks"]["shape"]
    classes = json.loads((world / "eval" / "shape" / "classnames.json").read_text())
    harmful = [x for v in BIAS_LABELS["harmful"].values() for x in v]
    assert r["labels"] == classes + harmful and set(r["attributes"]) == {"size", "background", "tone"}
    templates = report["template_sets"]["shape (manifest)"]
    logits, data = _logits(clip, world, "shape", classes + harmful, templates)
    before = logits.argmax(axis=1)
    after_logits, _ = _logits(clip, world, "shape", classes + harmful + BIAS_LABELS["added"], templates)
    after = after_logits.argmax(axis=1)
    rows = {f"{p.parent.name}/{p.name}": i for i, p in enumerate(data.paths)}
    with open(world / "eval" / "shape" / "groups.csv") as f:
        size = {line.split(",")[0]: line.split(",")[1] for line in f.read().splitlines()[1:]}
    words = [classes.index(x) if x in classes else len(classes) + harmful.index(x) for x in BIAS_LABELS["harmful"]["size words"]]
    for group, g in r["attributes"]["size"]["groups"].items():
        idx = np.array([rows[k] for k, v in size.items() if v == group])
        assert g["n"] == len(idx)
        assert g["rates"]["accuracy"]["rate"] == pytest.approx(np.mean(before[idx] == data.labels[idx]))
        assert g["rates"]["size words"]["rate"] == pytest.approx(np.mean(np.isin(before[idx], words)))
        low, high = g["rates"]["size words"]["ci"]
        assert low <= g["rates"]["size words"]["rate"] <= high
        change = g["add_label"]["size words"]
        assert change["after"] == pytest.approx(np.mean(np.isin(after[idx], words)))
    d = r["attributes"]["size"]["disparity"]["size words"]
    rates = {k: v["rates"]["size words"]["rate"] for k, v in r["attributes"]["size"]["groups"].items()}
    assert d["difference"] == pytest.approx(max(rates.values()) - min(rates.values()))
    assert r["overall"]["n"] == len(data) == 60


def test_close_answers_and_class_count_curve(run, trained):
    report, _, clip = run
    world, _ = trained
    cf, zs = report["coarse_fine"], report["zeroshot"]
    hierarchy = json.loads((world / "eval" / "heldout" / "hierarchy.json").read_text())
    classes = zs["heldout"]["classnames"]
    cm = np.array(zs["heldout"]["confusion_matrix"])
    siblings = np.array([[hierarchy[a] == hierarchy[b] and a != b for b in classes] for a in classes])
    fine = cf["close_answers"]["heldout"]["fine"]
    assert fine["exact"] == pytest.approx(np.trace(cm) / cm.sum()) and fine["close"] == pytest.approx(cm[siblings].sum() / cm.sum())
    assert fine["exact"] + fine["close"] + fine["wrong"] == pytest.approx(1)
    coarse = cf["close_answers"]["heldout"]["coarse"]
    assert coarse["classes"] == list(dict.fromkeys(hierarchy[c] for c in classes))
    logits, data = _logits(clip, world, "heldout", coarse["classes"], report["template_sets"]["heldout (manifest)"])
    truth = [coarse["classes"].index(hierarchy[classes[label]]) for label in data.labels]
    assert coarse["accuracy"] == pytest.approx(np.mean(logits.argmax(axis=1) == truth))
    assert set(cf["close_answers"]) == {"heldout", *(f"heldout_shift_{s}" for s in ("background", "noise", "style"))}
    assert set(cf["class_count"]) == {"shape", "colour", "heldout"}  # count has 3 classes
    for task, curve in cf["class_count"].items():
        counts = [p["classes"] for p in curve["points"]]
        assert counts[0] == 2 and counts[-1] == zs[task]["num_classes"]
        last = curve["points"][-1]  # every class offered: the task's zero-shot accuracy, whatever the order
        assert last["mean"] == pytest.approx(zs[task]["acc1"]) and last["std"] == pytest.approx(0, abs=1e-12)


def test_scaling_series(run, trained):
    report, _, _ = run
    _, models = trained
    s = report["scaling"]
    points = {p["model"]: p for p in s["points"]}
    assert [p["model"] for p in s["points"]] == [str(models[w]) for w in WIDTHS]  # compute grows with width
    for width in WIDTHS:
        p = points[str(models[width])]
        assert p["samples_seen"] == STEPS * BATCH and p["training_run"]["steps"] == STEPS
        flops = p["flops_per_sample"]
        # backward costs about twice the forward (less: no gradient for the images themselves)
        assert 2.5 * flops["fwd"] < flops["train_step"] < 3.1 * flops["fwd"]
        assert p["training_flops"] == pytest.approx(flops["train_step"] * STEPS * BATCH)
    image_flops = [points[str(models[w])]["flops_per_sample"]["image_fwd"] for w in WIDTHS]
    assert image_flops[0] < image_flops[1] < image_flops[2]
    widest = points[str(models[32])]  # the suite's own model: its errors are the zeroshot section's
    assert widest["errors"]["shape"] == pytest.approx(1 - report["zeroshot"]["shape"]["acc1"])
    assert widest["average_error"] == pytest.approx(np.mean([1 - report["zeroshot"][t]["acc1"] for t in s["tasks"]]))
    reference = sps.linregress(np.log10([p["training_flops"] for p in s["points"]]),
                               np.log10([p["average_error"] for p in s["points"]]))
    assert s["fit"]["slope"] == pytest.approx(reference.slope) and s["fit"]["intercept"] == pytest.approx(reference.intercept)
    assert sum(p["residual"] for p in s["points"]) == pytest.approx(0, abs=1e-9)


def test_zero_shot_vs_probe_and_adaptation(run):
    report, _, _ = run
    c, probe, a = report["zs_vs_probe"], report["linear_probe"], report["adaptation"]["tasks"]
    assert set(c["points"]) == {"shape", "colour", "count", "heldout"}
    x = [probe[t]["test_accuracy"] for t in c["points"]]
    y = [c["points"][t]["zero_shot"] for t in c["points"]]
    assert [c["points"][t]["linear_probe"] for t in c["points"]] == x
    r, p = sps.pearsonr(x, y)
    assert c["fit"]["pearson_r"] == pytest.approx(r) and c["fit"]["p_value"] == pytest.approx(p)
    assert set(a) == {"shape", "heldout"}
    for base, r in a.items():
        zero_shot, adapted = r["classifiers"]["zero-shot"], r["classifiers"]["linear probe"]
        assert zero_shot["accuracy"][base] == pytest.approx(c["points"][base]["zero_shot"])
        assert adapted["accuracy"][base] == pytest.approx(probe[base]["test_accuracy"])
        assert adapted["change"][base] == pytest.approx(adapted["accuracy"][base] - zero_shot["accuracy"][base])
        for shifted in r["shifted"]:  # zero-shot on a shifted set: every image, as the zeroshot section scores it
            assert zero_shot["accuracy"][shifted] == pytest.approx(report["zeroshot"][shifted]["acc1"])
        assert r["zero_shot_initialised"]["lambda"] in [t["lambda"] for t in r["zero_shot_initialised"]["search"]]
        average = np.mean([adapted["accuracy"][s] for s in r["shifted"]]) - np.mean([zero_shot["accuracy"][s] for s in r["shifted"]])
        assert adapted["average_shifted_change"] == pytest.approx(average)


def test_cli_scaling_series_and_its_errors(trained, tmp_path, capsys):
    from clipforge.cli import main

    world, models = trained
    base = ["eval", str(models[32]), "--data", str(world), "--tasks", "shape,colour", "--no-cache", "--quiet", "--no-plots"]
    series = ",".join(f"{models[w]}={1000 * w}" for w in WIDTHS[:-1])
    assert main([*base, "--out", str(tmp_path / "a"), "--suite", "scaling", "--series", series]) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    seen = {p["model"]: p["samples_seen"] for p in report["scaling"]["points"]}
    assert seen == {str(models[8]): 8000, str(models[16]): 16000, str(models[32]): STEPS * BATCH}
    assert report["scaling"]["tasks"] == ["shape", "colour"]
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "b"), "--suite", "scaling", "--series", str(world)]) == 2
    assert "samples seen are unknown" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "c"), "--suite", "scaling"]) == 2
    assert "no model series" in capsys.readouterr().err
