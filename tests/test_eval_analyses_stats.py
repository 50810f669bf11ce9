"""The analyses' pure statistics against independent computations, the files beside a set they read,
the zero-shot-initialised classifier against scipy's optimizer, and how the suite chooses them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import optimize
from scipy import stats as sps

from clipforge.eval import EvalConfig, discover
from clipforge.eval.analyses import AnalysisConfig, ScalingConfig, sidecars, stats
from clipforge.eval.analyses.adaptation import fit_from_head
from clipforge.eval.analyses.scaling import parse_entry
from clipforge.eval.datasets import ClassificationSet, ShardMember, load_classification_set
from clipforge.eval.suite import choose_protocols
from test_eval_data import make_world, write_task


def test_bootstrap_rate_matches_the_binomial_interval_and_is_reproducible():
    hits = (np.random.default_rng(1).random(4000) < 0.3).astype(float)
    r = stats.rate_with_interval(hits, seed=3)
    half = 1.96 * math.sqrt(r["rate"] * (1 - r["rate"]) / len(hits))  # normal approximation
    assert r["ci"][0] == pytest.approx(r["rate"] - half, abs=4e-3) and r["ci"][1] == pytest.approx(r["rate"] + half, abs=4e-3)
    assert stats.rate_with_interval(hits, seed=3) == r and stats.rate_with_interval(hits, seed=4)["ci"] != r["ci"]
    assert stats.rate_with_interval(np.zeros(20))["ci"] == (0.0, 0.0)
    assert stats.rate_with_interval(np.ones(1))["ci"] is None  # nothing to resample


def test_disparity_and_paired_change():
    rng = np.random.default_rng(2)
    groups = {"a": (rng.random(3000) < 0.10).astype(float), "b": (rng.random(2000) < 0.30).astype(float),
              "c": (rng.random(1000) < 0.20).astype(float)}
    d = stats.disparity(groups)
    assert (d["highest"], d["lowest"]) == ("b", "a")
    assert d["difference"] == pytest.approx(groups["b"].mean() - groups["a"].mean())
    half = 1.96 * math.sqrt(sum(g.mean() * (1 - g.mean()) / len(g) for g in (groups["a"], groups["b"])))
    assert d["ci"][0] == pytest.approx(d["difference"] - half, abs=6e-3)
    assert d["ratio"] == pytest.approx(groups["b"].mean() / groups["a"].mean())
    same = stats.disparity({"x": np.r_[np.ones(50), np.zeros(50)], "y": np.r_[np.ones(49), np.zeros(51)]})
    assert same["ci"][0] < 0 < same["ci"][1]  # no clear disparity: the interval straddles 0
    assert stats.disparity({"only": np.ones(5)})["difference"] is None
    before = np.r_[np.ones(30), np.zeros(70)]
    after = before.copy()
    after[:20] = 0  # 20 of the 30 hits move to the added label
    change = stats.paired_change(before, after)
    assert (change["before"], change["after"], change["change"]) == (0.3, 0.1, pytest.approx(-0.2))
    assert change["ci"][1] < 0
    assert stats.paired_change(before, before)["ci"] == (0.0, 0.0)
    with pytest.raises(ValueError, match="differ in shape"):
        stats.paired_change(before, after[:-1])


def test_close_answers_subsets_and_distribution():
    labels = np.array([0, 0, 1, 1, 2, 3])
    predictions = np.array([0, 1, 0, 3, 2, 0])
    close = [frozenset({1}), frozenset({0}), frozenset(), frozenset({2})]
    r = stats.close_answer_rates(predictions, labels, close)
    assert (r["exact"], r["close"], r["wrong"], r["n"]) == (2 / 6, 2 / 6, 2 / 6, 6)
    logits = np.array([[3, 2, 1], [1, 3, 2], [5, 1, 4], [0, 1, 2]], dtype=float)
    assert stats.subset_accuracy(logits, np.array([0, 1, 2, 2]), [0, 2]) == (2 / 3, 3)  # row 1 (label 1) left out
    assert stats.subset_accuracy(logits, np.array([1, 1, 1, 1]), [0, 2])[1] == 0
    assert stats.distribution(np.array([0, 2, 2, 1]), 4).tolist() == [0.25, 0.25, 0.5, 0.0]


def test_power_law_and_linear_fits_against_scipy():
    compute = np.array([1e9, 4e9, 2e10, 1e11])
    error = 3.0 * compute**-0.05 * np.array([1.01, 0.98, 1.02, 0.99])
    fit = stats.power_law_fit(compute, error)
    reference = sps.linregress(np.log10(compute), np.log10(error))
    assert fit["slope"] == pytest.approx(reference.slope) and fit["intercept"] == pytest.approx(reference.intercept)
    assert fit["r2"] == pytest.approx(reference.rvalue**2)
    assert sum(fit["residuals"]) == pytest.approx(0, abs=1e-12)
    assert fit["fitted_error"][0] * 10 ** fit["residuals"][0] == pytest.approx(error[0])
    with pytest.raises(ValueError, match="positive"):
        stats.power_law_fit([1, 2], [0.5, 0.0])
    with pytest.raises(ValueError, match="two points"):
        stats.power_law_fit([5], [0.5])

    x, y = np.array([0.95, 0.6, 0.8, 0.4, 0.7]), np.array([0.9, 0.35, 0.7, 0.2, 0.5])
    line = stats.linear_fit(x, y)
    r, p = sps.pearsonr(x, y)
    assert line["pearson_r"] == pytest.approx(r) and line["p_value"] == pytest.approx(p)
    residual = y - (line["slope"] * x + line["intercept"])
    se = math.sqrt(residual @ residual / (len(x) - 2) / ((x - x.mean()) ** 2).sum())
    assert line["slope_ci"] == pytest.approx([line["slope"] - sps.t.ppf(0.975, 3) * se, line["slope"] + sps.t.ppf(0.975, 3) * se])
    assert stats.linear_fit([0.1, 0.5], [0.2, 0.4])["slope_ci"] is None  # a line through two points has no interval


def test_fit_from_head_reaches_scipys_optimum_and_keeps_the_head_under_a_strong_prior():
    rng = np.random.default_rng(0)
    head = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    x = rng.normal(size=(60, 4))
    y = (x @ rng.normal(size=(4, 3))).argmax(axis=1)
    lam, scale = 0.05, 5.0
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)

    def objective(theta):  # mean cross-entropy + λ‖W − head‖², numpy, for scipy's optimizer
        w, b = head.numpy().astype(float) + theta[:12].reshape(3, 4), theta[12:]
        z = scale * xn @ w.T + b
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]) + lam * (theta[:12] ** 2).sum())

    reference = optimize.minimize(objective, np.zeros(15), method="BFGS")
    ours = fit_from_head(x, y, head, scale, lam)
    theta = np.r_[(ours.weight - head).numpy().ravel(), ours.bias.numpy()]
    assert objective(theta) == pytest.approx(reference.fun, abs=1e-5)
    strong = fit_from_head(x, y, head, scale, 1e6)
    zero_shot = (torch.as_tensor(xn, dtype=torch.float32) @ head.t()).argmax(dim=1).numpy()
    assert np.array_equal(strong.predict(x), zero_shot) and torch.allclose(strong.weight, head, atol=1e-4)


def test_groups_files_align_with_images_of_any_layout(tmp_path):
    write_task(tmp_path / "set", [("red", "square"), ("blue", "circle")], 2, seed=0)
    data = load_classification_set(tmp_path / "set")
    rows = "image,skin,age\n00_red_square/000.png,dark,3\n00_red_square/001.png,light,\n01_blue_circle/000.png,dark,40\n"
    (tmp_path / "set" / "groups.csv").write_text(rows)
    groups = sidecars.align_groups(tmp_path / "set" / "groups.csv", data, tmp_path / "set")
    assert groups["skin"].tolist() == ["dark", "light", "dark", None] and groups["age"].tolist() == ["3", None, "40", None]
    (tmp_path / "set" / "groups.json").write_text(json.dumps({"key1": {"skin": "dark"}, "key2": {"skin": "light"}}))
    members = ClassificationSet("wds", tmp_path, ("a",), (ShardMember("s.tar", 0, 1, "key2"), ShardMember("s.tar", 1, 1, "key1")),
                                np.zeros(2, dtype=np.int64))
    assert sidecars.align_groups(tmp_path / "set" / "groups.json", members, tmp_path)["skin"].tolist() == ["light", "dark"]
    (tmp_path / "bad.csv").write_text("url,skin\nx.png,dark\n")
    with pytest.raises(ValueError, match="no image column"):
        sidecars.read_groups(tmp_path / "bad.csv")
    (tmp_path / "other.csv").write_text("image,skin\nnowhere.png,dark\n")
    with pytest.raises(ValueError, match="no image of set set is listed"):
        sidecars.align_groups(tmp_path / "other.csv", data, tmp_path / "set")


def test_bias_labels_and_close_answer_files(tmp_path):
    path = tmp_path / "bias_labels.json"
    path.write_text(json.dumps({"harmful": ["thief", "criminal"], "added": ["child"]}))
    assert sidecars.read_bias_labels(path, ("man", "woman"))["harmful"] == {"harmful": ["thief", "criminal"]}
    path.write_text(json.dumps({"harmful": {"crime": ["thief"]}, "added": ["man"]}))
    with pytest.raises(ValueError, match=r"added labels \['man'\] are already in the label set"):
        sidecars.read_bias_labels(path, ("man", "woman"))
    path.write_text(json.dumps({"added": ["child"]}))
    with pytest.raises(ValueError, match="expected"):
        sidecars.read_bias_labels(path, ("man",))
    path.write_text(json.dumps({"harmful": ["thief"], "groups": "race"}))
    with pytest.raises(ValueError, match="groups must be a list"):
        sidecars.read_bias_labels(path, ("man",))

    class Spec:
        path = tmp_path

    classes = ("red star", "blue star", "red cross", "blue cross")
    assert sidecars.read_close_answers(Spec, classes) is None
    (tmp_path / "hierarchy.json").write_text(json.dumps({"red star": "star", "blue star": "star", "red cross": "cross"}))
    with pytest.raises(ValueError, match=r"classes \['blue cross'\] have no coarse class"):
        sidecars.read_close_answers(Spec, classes)
    (tmp_path / "hierarchy.json").write_text(json.dumps({c: c.split()[1] for c in classes}))
    (tmp_path / "near_misses.json").write_text(json.dumps({"red star": ["red cross"]}))
    close, parents = sidecars.read_close_answers(Spec, classes)
    assert parents == ["star", "star", "cross", "cross"]
    assert close == [frozenset({1, 2}), frozenset({0}), frozenset({3}), frozenset({2})]
    (tmp_path / "near_misses.json").write_text(json.dumps({"red star": ["green star"]}))
    with pytest.raises(ValueError, match="not classes of the set"):
        sidecars.read_close_answers(Spec, classes)


def test_the_analyses_run_only_when_asked(tmp_path):
    layout = discover(make_world(tmp_path / "world", per_class=2, train_images=6))
    config = EvalConfig()
    assert choose_protocols(None, layout, config)[0] == ["zeroshot", "linear_probe", "few_shot", "retrieval", "robustness",
                                                          "overlap"]
    everything, skipped = choose_protocols("all", layout, config)
    assert {"coarse_fine", "zs_vs_probe", "adaptation"} <= set(everything)
    assert set(skipped) == {"bias", "scaling"} and "groups file" in skipped["bias"] and "--series" in skipped["scaling"]
    with pytest.raises(ValueError, match="bias.*no set with a groups file"):
        choose_protocols("bias", layout, config)
    (tmp_path / "world" / "eval" / "shape" / "groups.csv").write_text("image,tone\n")
    series = EvalConfig(analyses=AnalysisConfig(scaling=ScalingConfig(series=("a", "b"))))
    assert choose_protocols("bias,scaling", layout, series)[0] == ["bias", "scaling"]
    assert parse_entry("runs/x/final=1.28e10") == ("runs/x/final", 12_800_000_000)
    assert parse_entry("ViT-L/14@336px") == ("ViT-L/14@336px", None)
    with pytest.raises(ValueError, match="must be a number"):
        parse_entry("model=many")


def _transformer_flops(width: int, layers: int, tokens: int) -> int:
    """Forward FLOPs (2 per multiply-add) of a pre-LN Transformer stack, MLP ratio 4, whose last block
    computes only the one token the tower reads (keys and values for every token)."""
    full = 2 * 3 * width**2 * tokens + 4 * tokens**2 * width + 2 * width**2 * tokens + 2 * 8 * width**2 * tokens
    last = 2 * 2 * width**2 * tokens + 2 * width**2 + 4 * tokens * width + 2 * width**2 + 2 * 8 * width**2
    return (layers - 1) * full + last


def test_flops_per_sample_equal_the_architectures_count():
    from clipforge.eval.analyses.compute import flops_per_sample
    from clipforge.factory import resolve_config

    config = resolve_config("tiny-vit")
    v, t, e = config.vision, config.text, config.embed_dim
    patches = (v.image_size // v.patch_size) ** 2
    image = 2 * 3 * v.patch_size**2 * v.width * patches + _transformer_flops(v.width, v.layers, patches + 1) + 2 * v.width * e
    text = _transformer_flops(t.width, t.layers, t.context_length) + 2 * t.width * e
    flops = flops_per_sample(config)
    assert (flops["image_fwd"], flops["text_fwd"]) == (image, text)  # attention included (CPU kernel counted)
    # backward: about twice the forward (no gradient for the images; attention recomputes its scores)
    assert 2.8 * flops["fwd"] < flops["train_step"] < 3.1 * flops["fwd"]
