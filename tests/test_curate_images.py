"""Filters that need the images: CLIP score and decontamination against eval sets, through `clipforge embed`."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipforge import cli
from clipforge.serve.embed import read_embeddings
from clipforge.serve.encoder import Encoder
from clipforge.serve.sample import make_model_dir, make_shape_images


@pytest.fixture(scope="module")
def setup(tmp_path_factory, reference_dir):
    root = tmp_path_factory.mktemp("curate_images")
    model = make_model_dir(root / "model", "tiny-vit", reference_dir / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz")
    paths = make_shape_images(root / "pool_images", 40)
    rows = [{"path": f"pool_images/{p.name}", "caption": f"a {p.stem.split('_')[0]} {p.stem.split('_')[1]}"}
            for p in paths]
    pq.write_table(pa.Table.from_pylist(rows), root / "pool.parquet")
    # An eval set: near-copies of 6 pool images (cropped 3 px, JPEG re-encoded) among 14 unrelated images.
    copies = [3, 8, 15, 22, 30, 37]
    eval_dir = root / "eval" / "shapes"
    for i in copies:
        image = Image.open(paths[i]).convert("RGB")
        image = image.crop((2, 1, 62, 63)).resize((64, 64))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=70)
        folder = eval_dir / paths[i].stem.split("_")[1]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"copy_{i}.jpg").write_bytes(buffer.getvalue())
    for p in make_shape_images(root / "unrelated", 14, seed=11):
        folder = eval_dir / p.stem.split("_")[1]
        folder.mkdir(parents=True, exist_ok=True)
        p.rename(folder / p.name)
    (eval_dir / "classnames.json").write_text(json.dumps(sorted(p.name for p in eval_dir.iterdir())))
    return {"root": root, "model": model, "copies": {f"{i:09d}" for i in copies}}


@pytest.mark.slow
def test_decontamination_removes_the_eval_copies_and_counts_them_per_set(setup, tmp_path):
    root = setup["root"]
    queries = tmp_path / "q.txt"
    queries.write_text("red\ngreen\nblue\nyellow\ncircle\nsquare\ntriangle\n")
    out = tmp_path / "out"
    code = cli.main(["data", "curate", "--pool", str(root / "pool.parquet"), "--queries", str(queries), "--out", str(out),
                     "--cap", "1000", "--clip-model", str(setup["model"]), "--decontaminate", str(root / "eval"),
                     "--min-clip-score", "-1"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    removed = {s["key"] for s in report["dropped"]["samples"] if s["reason"].startswith("eval_overlap")}
    assert removed == setup["copies"]
    assert report["dropped"]["by_reason"] == {"eval_overlap:shapes": 6}
    sets = report["image_filters"]["decontamination"]["sets"]
    assert sets["shapes"]["removed"] == 6 and sets["shapes"]["eval_images"] == 20
    kept = {r["uid"] for r in pq.read_table(out / "selected").to_pylist()}
    assert kept == {f"{i:09d}" for i in range(40)} - setup["copies"]


@pytest.mark.slow
def test_clip_score_filter_uses_embed_outputs_and_drops_the_lowest(setup, tmp_path):
    root = setup["root"]
    pool = str(root / "pool.parquet")
    for kind in ("image", "text"):  # what `torchrun ... clipforge embed --pool` writes on a large pool
        assert cli.main(["embed", str(setup["model"]), "--pool", pool, "--pool-kind", kind,
                         "--out", str(tmp_path / kind), "--part-size", "16"]) == 0
    images, texts = read_embeddings(tmp_path / "image"), read_embeddings(tmp_path / "text")
    assert images.ids == texts.ids == [f"{i:09d}" for i in range(40)]
    encoder = Encoder.load(setup["model"])
    direct = (images.vectors * encoder.encode_texts(
        [r["caption"] for r in pq.read_table(pool).to_pylist()])).sum(axis=1)
    np.testing.assert_allclose((images.vectors * texts.vectors).sum(axis=1), direct, atol=2e-3)  # float16 parts
    queries = tmp_path / "q.txt"
    queries.write_text("red\ngreen\nblue\nyellow\n")
    out = tmp_path / "out"
    assert cli.main(["data", "curate", "--pool", pool, "--queries", str(queries), "--out", str(out),
                     "--image-embeddings", str(tmp_path / "image"), "--text-embeddings", str(tmp_path / "text"),
                     "--clip-top-fraction", "0.25"]) == 0
    report = json.loads((out / "report.json").read_text())
    scores = (images.vectors * texts.vectors).sum(axis=1)
    threshold = np.quantile(scores, 0.75)
    low = {images.ids[i] for i in np.flatnonzero(scores < threshold)}
    assert report["dropped"]["by_reason"] == {"low_clip_score": len(low)} and len(low) == 30
    kept = {r["uid"] for r in pq.read_table(out / "selected").to_pylist()}
    assert kept == set(images.ids) - low
    assert report["image_filters"]["clip_score"]["threshold"] == pytest.approx(threshold)


def test_fpr_threshold_lets_at_most_the_allowed_share_of_negatives_through():
    from clipforge.data.image_filters import fpr_threshold

    negatives = np.array([0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 0.95])
    for rate in (0.0, 0.1, 0.25, 0.5):
        t = fpr_threshold(negatives, rate)
        assert np.mean(negatives >= t) <= rate
        assert np.mean(negatives >= np.nextafter(t, -np.inf)) > rate  # and it is the smallest such threshold
