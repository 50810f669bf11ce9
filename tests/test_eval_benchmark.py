"""`clipforge benchmark`: a models × datasets × tasks grid, by name (local root) and by path,
CLIP_benchmark-schema results, resuming, the table, the plots and failing cells."""

from __future__ import annotations

import csv
import json
import math

import pytest
from PIL import Image

from cb_sets import classification_set, retrieval_set
from clipforge.eval import EvalConfig
from clipforge.eval.benchmark import run_benchmark
from test_eval_data import CLASSES, aligned_clip, tiny_clip

pytestmark = pytest.mark.slow


def _strict(text: str):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    import clipforge

    tmp = tmp_path_factory.mktemp("bench")
    for name, (model, _, tokenizer) in (("aligned", aligned_clip()), ("random", tiny_clip())):
        clipforge.save(model, tmp / name, tokenizer)
    root = tmp / "root"
    classification_set(root / "wds_vtab-pcam", per_class=4, classes=CLASSES[:2], names=["lymph node", "tumour"])
    retrieval_set(root / "wds_flickr8k")
    shapes = classification_set(tmp / "shapes", per_class=4)
    return tmp, root, shapes


def test_grid_results_table_plots_and_resume(grid, capsys):
    from clipforge.cli import main

    tmp, root, shapes = grid
    models, out = f"{tmp / 'aligned'},{tmp / 'random'}", tmp / "out"
    args = ["benchmark", "--models", models, "--datasets", f"pcam,flickr8k,{shapes}", "--tasks",
            "zeroshot,linear_probe,retrieval", "--dataset-root", str(root), "--out", str(out), "--quiet", "--no-cache"]
    assert main(args) == 0, capsys.readouterr().err
    files = sorted(p.name for p in (out / "results").iterdir())
    assert len(files) == 10  # per model: pcam and shapes zero-shot + probe, flickr8k retrieval
    for name in files:
        record = _strict((out / "results" / name).read_text())
        assert set(record) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
    zs = _strict((out / "results" / "shapes_aligned_aligned_en_zeroshot_classification.json").read_text())
    run = _strict((out / "runs" / "_".join(str(tmp / "aligned").strip("/").split("/")) / "shapes" / "report.json").read_text())
    assert zs["metrics"]["acc1"] == run["zeroshot"]["shapes"]["acc1"] > 0.3  # the table's numbers are the suite's
    assert set(run["image_pass"]) == {"shapes", "shapes/train"}  # zero-shot and probe shared one pass per split
    rows = list(csv.DictReader((out / "benchmark.csv").open()))
    assert len(rows) == 10 and {r["task"] for r in rows} == {"zeroshot_classification", "linear_probe", "zeroshot_retrieval"}
    pcam = next(r for r in rows if r["dataset"] == "pcam" and r["task"] == "zeroshot_classification")
    assert pcam["main_metric"] == "acc1" and 0 <= float(pcam["main"]) <= 1
    markdown = (out / "benchmark.md").read_text()
    assert "## zeroshot (%)" in markdown and "## linear_probe (%)" in markdown and "## retrieval (%)" in markdown
    assert markdown.count("| **mean** |") == 3
    for plot in ("zeroshot_vs_linear_probe.png", "per_dataset_zeroshot.png", "per_dataset_linear_probe.png",
                 "per_dataset_retrieval.png"):
        with Image.open(out / plot) as image:
            assert image.format == "PNG" and image.size[0] > 300

    # Resume: finished cells are kept; a missing one is recomputed, and only its model is loaded.
    stamps = {n: (out / "results" / n).stat().st_mtime_ns for n in files}
    (out / "results" / "pcam_random_random_en_linear_probe.json").unlink()
    loads = []

    def load(model):
        loads.append(model)
        import clipforge

        return clipforge.load(model)

    result = run_benchmark(models.split(","), ["pcam", "flickr8k", str(shapes)], ["zeroshot", "linear_probe", "retrieval"],
                           out, config=EvalConfig(progress=False, cache_dir=None), dataset_root=root, download=False,
                           load=load, echo=None)
    assert result["skipped"] == 9 and result["done"] == 1 and loads == [str(tmp / "random")]
    for name, stamp in stamps.items():
        if name != "pcam_random_random_en_linear_probe.json":
            assert (out / "results" / name).stat().st_mtime_ns == stamp
    assert (out / "results" / "pcam_random_random_en_linear_probe.json").is_file()


def test_a_failing_cell_is_recorded_and_the_rest_of_the_grid_runs(grid, capsys):
    from clipforge.cli import main

    tmp, root, _ = grid
    out = tmp / "failing"
    args = ["benchmark", "--models", str(tmp / "aligned"), "--datasets", "cars,pcam", "--dataset-root", str(root),
            "--out", str(out), "--quiet", "--no-cache", "--no-download", "--no-plots"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "1 cells failed" in err and "dataset cars: not found under" in err
    errors = json.loads((out / "errors.json").read_text())
    assert list(errors) == [f"{tmp / 'aligned'} / cars"]
    assert [p.name for p in (out / "results").iterdir()] == ["pcam_aligned_aligned_en_zeroshot_classification.json"]
    assert not math.isnan(json.loads((out / "results" / "pcam_aligned_aligned_en_zeroshot_classification.json").read_text())
                          ["metrics"]["acc1"])
    assert not list(out.rglob("*.tmp"))  # every file was written whole
    assert main(["benchmark", "--models", str(tmp / "aligned"), "--datasets", "cifar11", "--out", str(out)]) == 2
    assert "did you mean cifar10" in capsys.readouterr().err
