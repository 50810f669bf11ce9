"""Batch embedding: sources (folder, CSV, shards, texts), formats, bad images, exact resume after interruption."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from clipforge import cli
from clipforge.serve.embed import EmbedConfig, EmbedError, read_embeddings, run_embedding
from clipforge.serve.embed_sources import image_items, text_items
from clipforge.serve.encoder import Encoder
from clipforge.serve.sample import bomb_png, make_model_dir, make_shape_images


@pytest.fixture(scope="module")
def world(tmp_path_factory, reference_dir):
    root = tmp_path_factory.mktemp("embed")
    model = make_model_dir(root / "model", "tiny-vit", reference_dir / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz")
    images = root / "images"
    make_shape_images(images / "a", 18)
    make_shape_images(images / "b", 12, seed=1)
    (images / "b" / "zz_not_an_image.png").write_text("<html>404</html>")
    (images / "b" / "zz_bomb.png").write_bytes(bomb_png(20000, 20000))
    good = (images / "a" / "blue_circle_0002.png").read_bytes()
    (images / "b" / "zz_truncated.png").write_bytes(good[: len(good) // 2])
    encoder = Encoder.load(model)
    reference = root / "reference"
    result = run_embedding(image_items(str(images)), encoder.encode_images, reference,
                           EmbedConfig(part_size=8, batch_size=4), _header(encoder, images))
    assert result.complete and result.parts_written == [0, 1, 2, 3, 4]
    return {"root": root, "model": model, "images": images, "encoder": encoder, "reference": reference}


def _header(encoder: Encoder, source) -> dict:
    return {"kind": "image", "source": str(source), "model_sha256": encoder.fingerprint(), "dim": encoder.dim}


def _mtimes(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(path.glob("part-*"))}


def test_folder_embedding_skips_bad_images_with_reasons(world):
    emb = read_embeddings(world["reference"])
    assert emb.vectors.shape == (30, 64) and emb.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=2e-3)  # float16 storage
    assert emb.ids[0] == "a/blue_circle_0002" and len(set(emb.ids)) == 30
    skipped = {i: r for part in emb.manifest["parts"].values() for i, r in part["skipped"]}
    assert skipped == {"b/zz_bomb": "too_large", "b/zz_not_an_image": "not_an_image", "b/zz_truncated": "corrupt_image"}
    # The stored vectors are the encoder's, rounded to float16.
    direct = world["encoder"].encode_images([_open(world["images"] / "a" / "blue_circle_0002.png")])
    np.testing.assert_allclose(emb.vectors[0], direct[0], atol=1e-3)


def _open(path):
    from PIL import Image

    return Image.open(path).convert("RGB")


def test_resume_after_stop_equals_uninterrupted_run(world, tmp_path):
    encoder, images = world["encoder"], world["images"]
    config = EmbedConfig(part_size=8, batch_size=4, max_parts=2)
    first = run_embedding(image_items(str(images)), encoder.encode_images, tmp_path, config, _header(encoder, images))
    assert not first.complete and first.parts_written == [0, 1]
    with pytest.raises(EmbedError, match="not finished"):
        read_embeddings(tmp_path)
    before = _mtimes(tmp_path)
    calls = []

    def counting(batch):
        calls.append(len(batch))
        return encoder.encode_images(batch)

    second = run_embedding(image_items(str(images)), counting, tmp_path, EmbedConfig(part_size=8, batch_size=4),
                           _header(encoder, images))
    assert second.complete and second.parts_reused == [0, 1] and second.parts_written == [2, 3, 4]
    assert sum(calls) == 33 - 16 - 3  # only parts 2-4 were encoded (3 bad images are never encoded)
    assert {k: v for k, v in _mtimes(tmp_path).items() if k in before} == before  # finished parts untouched
    _assert_same(read_embeddings(tmp_path), read_embeddings(world["reference"]))


@pytest.mark.slow
def test_resume_after_process_killed_mid_part(world, tmp_path):
    """A real crash: the process SIGKILLs itself while encoding part 2; a rerun finishes the job."""
    script = f"""
import os, signal
from clipforge.serve.embed import EmbedConfig, run_embedding
from clipforge.serve.embed_sources import image_items
from clipforge.serve.encoder import Encoder
encoder = Encoder.load({str(world['model'])!r})
calls = 0
def encode(images):
    global calls
    calls += 1
    if calls == 5:  # 2 batches per part: the first batch of part 2
        os.kill(os.getpid(), signal.SIGKILL)
    return encoder.encode_images(images)
header = {{"kind": "image", "source": {str(world['images'])!r}, "model_sha256": encoder.fingerprint(),
          "dim": encoder.dim}}
run_embedding(image_items({str(world['images'])!r}), encode, {str(tmp_path)!r},
              EmbedConfig(part_size=8, batch_size=4), header)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(manifest["parts"]) == ["part-00000", "part-00001"] and not manifest["complete"]
    before = _mtimes(tmp_path)
    encoder, images = world["encoder"], world["images"]
    result = run_embedding(image_items(str(images)), encoder.encode_images, tmp_path,
                           EmbedConfig(part_size=8, batch_size=4), _header(encoder, images))
    assert result.parts_reused == [0, 1] and result.parts_written == [2, 3, 4]
    assert {k: v for k, v in _mtimes(tmp_path).items() if k in before} == before
    _assert_same(read_embeddings(tmp_path), read_embeddings(world["reference"]))


def _assert_same(a, b) -> None:
    assert a.ids == b.ids and a.sources == b.sources
    np.testing.assert_array_equal(a.vectors, b.vectors)


def test_resume_refuses_other_settings_or_changed_source(world, tmp_path):
    encoder, images = world["encoder"], world["images"]
    run_embedding(image_items(str(images / "a")), encoder.encode_images, tmp_path,
                  EmbedConfig(part_size=8, max_parts=1), _header(encoder, images / "a"))
    with pytest.raises(EmbedError, match="other settings.*dtype"):
        run_embedding(image_items(str(images / "a")), encoder.encode_images, tmp_path,
                      EmbedConfig(part_size=8, dtype="float32"), _header(encoder, images / "a"))
    (images / "a" / "aaa_new.png").write_bytes((images / "a" / "blue_circle_0002.png").read_bytes())
    try:
        with pytest.raises(EmbedError, match="source changed"):
            run_embedding(image_items(str(images / "a")), encoder.encode_images, tmp_path,
                          EmbedConfig(part_size=8), _header(encoder, images / "a"))
    finally:
        (images / "a" / "aaa_new.png").unlink()


@pytest.mark.slow
def test_parquet_float32_from_csv(world, tmp_path):
    rows = sorted((world["images"] / "a").glob("*.png"))[:5]
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("filepath,label\n" + "".join(f"{p},x\n" for p in rows) + "missing.png,y\n")
    encoder = world["encoder"]
    result = run_embedding(image_items(str(csv_path)), encoder.encode_images, tmp_path / "out",
                           EmbedConfig(part_size=4, dtype="float32", format="parquet"), _header(encoder, csv_path))
    assert result.complete and result.rows == 5 and result.skipped == [("000000005", "missing_image")]
    emb = read_embeddings(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").glob("part-*")) == ["part-00000.parquet", "part-00001.parquet"]
    assert emb.sources == [str(p) for p in rows]
    np.testing.assert_allclose(emb.vectors, encoder.encode_images([_open(p) for p in rows]), atol=1e-6)


def test_webdataset_shards(world, tmp_path):
    paths = sorted((world["images"] / "a").glob("*.png"))[:6]
    for shard in range(2):
        with tarfile.open(tmp_path / f"{shard:05d}.tar", "w") as tar:
            for n, path in enumerate(paths[shard * 3 : shard * 3 + 3]):
                for name, data in ((f"s{shard}_{n}.png", path.read_bytes()), (f"s{shard}_{n}.txt", b"a caption")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    spec = str(tmp_path / "{00000..00001}.tar")
    source = image_items(spec)
    assert source.total == 6
    encoder = world["encoder"]
    run_embedding(source, encoder.encode_images, tmp_path / "out", EmbedConfig(part_size=4), _header(encoder, spec))
    emb = read_embeddings(tmp_path / "out")
    assert emb.ids == ["s0_0", "s0_1", "s0_2", "s1_0", "s1_1", "s1_2"]
    assert emb.sources[0] == f"{tmp_path / '00000.tar'}#s0_0.png"
    np.testing.assert_allclose(emb.vectors, encoder.encode_images([_open(p) for p in paths]), atol=2e-3)


def test_cli_embeds_texts_and_refuses_bad_input(world, tmp_path, capsys):
    texts = tmp_path / "texts.csv"
    texts.write_text("key,caption\nk1,a red circle\nk2,\nk3,a blue square\n")
    out = tmp_path / "out"
    assert cli.main(["embed", str(world["model"]), "--texts", str(texts), "--id-column", "key", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["complete"] and summary["rows"] == 2 and summary["skipped"] == 1
    emb = read_embeddings(out)
    assert emb.ids == ["k1", "k3"] and emb.manifest["kind"] == "text"
    np.testing.assert_allclose(emb.vectors, world["encoder"].encode_texts(["a red circle", "a blue square"]), atol=2e-3)
    assert cli.main(["embed", str(world["model"]), "--images", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert cli.main(["embed", str(world["model"]), "--images", str(world["images"]), "--out", str(out)]) == 2
    assert "other settings" in capsys.readouterr().err


def test_text_file_source(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("first\n\n  second  \n")
    source = text_items(str(path))
    items = list(source.items)
    assert [(i.id, i.source, i.load()) for i in items] == [("1", "t.txt:1", "first"), ("3", "t.txt:3", "second")]
    assert os.path.basename(source.description.split()[-1]) == "t.txt"
