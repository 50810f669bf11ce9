"""Vector index: exact search equals brute force, HNSW recall, the on-disk format, the index/search CLIs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipforge import cli
from clipforge.serve.index import IndexConfig, VectorIndex, VectorIndexError, build_from_embeddings, normalize_rows
from clipforge.serve.sample import build_demo

pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install 'clipforge[serve]')")


def _random(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_flat_index_is_exact_cosine_search():
    vectors, queries = _random(500, 32, 0), _random(7, 32, 1)
    index = VectorIndex.build(vectors, [f"id{i}" for i in range(500)], [f"src{i}" for i in range(500)])
    assert index.info["kind"] == "flat" and len(index) == 500 and index.dim == 32
    scores, rows = index.search(queries, 10)
    cosine = normalize_rows(queries) @ normalize_rows(vectors).T  # [7, 500]
    expected = np.argsort(-cosine, axis=1)[:, :10]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(cosine, expected, axis=1), atol=1e-5)
    # k larger than the index gives every row once; k = 0 gives none.
    assert index.search(queries[:1], 1000)[1].shape == (1, 500)
    assert index.search(queries[:1], 0)[1].shape == (1, 0)
    with pytest.raises(VectorIndexError, match="dimension 16"):
        index.search(_random(1, 16, 2), 3)


def test_hnsw_recall_and_auto_kind(tmp_path):
    vectors, queries = _random(2000, 32, 3), _random(50, 32, 4)
    ids = [str(i) for i in range(2000)]
    config = IndexConfig(exact_threshold=1000, ef_construction=80)
    hnsw = VectorIndex.build(vectors, ids, ids, config)
    assert config.resolved_kind(999) == "flat" and hnsw.info["kind"] == "hnsw"
    exact = VectorIndex.build(vectors, ids, ids, IndexConfig(kind="flat"))
    _, approx_rows = hnsw.search(queries, 10)
    _, exact_rows = exact.search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx_rows, exact_rows)])
    assert recall >= 0.95, recall
    hnsw.save(tmp_path / "hnsw")
    loaded = VectorIndex.load(tmp_path / "hnsw", ef_search=256)
    assert loaded.info["hnsw"] == {"m": 32, "ef_construction": 80, "ef_search": 128}
    assert loaded.faiss_index.hnsw.efSearch == 256
    np.testing.assert_array_equal(loaded.search(queries, 10)[1][:, 0], exact_rows[:, 0])


def test_save_load_round_trip_and_format(tmp_path):
    vectors = _random(20, 8, 5)
    ids = [f"dir/{i}.png" for i in range(20)]
    index = VectorIndex.build(vectors, ids, [f"/data/{i}" for i in ids], info={"model": "m"})
    index.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.faiss", "index.json", "items.jsonl"]
    info = json.loads((tmp_path / "index.json").read_text())
    assert info == {"format": "clipforge-index/1", "kind": "flat", "metric": "inner_product", "dim": 8,
                    "count": 20, "model": "m"}
    first = json.loads((tmp_path / "items.jsonl").read_text().splitlines()[0])
    assert first == {"id": "dir/0.png", "source": "/data/dir/0.png"}
    loaded = VectorIndex.load(tmp_path)
    assert loaded.ids == ids
    np.testing.assert_array_equal(loaded.search(vectors, 3)[1], index.search(vectors, 3)[1])
    (tmp_path / "index.json").write_text('{"format": "other"}')
    with pytest.raises(VectorIndexError, match="unknown index format"):
        VectorIndex.load(tmp_path)
    with pytest.raises(VectorIndexError, match="not an index directory"):
        VectorIndex.load(tmp_path / "missing")


def test_index_and_search_cli(tmp_path, reference_dir, capsys):
    demo = build_demo(tmp_path, reference_dir / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz", images=24)
    out = tmp_path / "index2"
    assert cli.main(["index", str(demo["embeddings"]), "--out", str(out), "--kind", "hnsw"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "hnsw"
    image = sorted(demo["images"].glob("*.png"))[5]
    assert cli.main(["search", str(out), "--image", str(image), "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["results"]
    assert hits[0]["id"] == image.stem and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert cli.main(["search", str(demo["index"]), "--text", "a red circle", "--text", "blue", "-k", "4"]) == 0
    table = capsys.readouterr().out
    assert table.count("query:") == 2 and table.count(".png") == 8
    assert cli.main(["index", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "not an embedding directory" in capsys.readouterr().err


def test_refuses_text_embeddings(tmp_path):
    from clipforge.serve.embed import EmbedConfig, run_embedding
    from clipforge.serve.embed_sources import text_items

    (tmp_path / "t.txt").write_text("a\nb\n")
    run_embedding(text_items(str(tmp_path / "t.txt")), lambda texts: _random(len(texts), 4, 0), tmp_path / "e",
                  EmbedConfig(), {"kind": "text"})
    with pytest.raises(VectorIndexError, match="holds text embeddings"):
        build_from_embeddings(tmp_path / "e")
