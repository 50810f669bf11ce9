"""The whole path on loopback: curate a pool whose URLs point at a local HTTP server, download the
selected list with the real img2dataset into webdataset shards, and train on them."""

from __future__ import annotations

import http.server
import io
import json
import os
import tarfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset's albumentations would ask the network
pytest.importorskip("img2dataset")

from clipforge.data.curate import CurateConfig, curate  # noqa: E402
from clipforge.data.download import DownloadConfig, download  # noqa: E402

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 20)}


def _png(i: int) -> bytes:
    from PIL import Image

    colour = list(COLOURS.values())[i % 4]
    image = Image.new("RGB", (40 + i % 7, 48), colour)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


class _Images(http.server.BaseHTTPRequestHandler):
    """/ok/N.png: an image; /broken/N.png: bytes that are no image; /slow/N.png: past the timeout; else 404."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        kind, _, name = self.path.strip("/").partition("/")
        if kind == "slow":
            time.sleep(6.0)
        if kind in ("ok", "slow"):
            body, status = _png(int(name.split(".")[0])), 200
        elif kind == "broken":
            body, status = b"<html>not an image</html>" * 3, 200
        else:
            body, status = b"not found", 404
        try:
            self.send_response(status)
            self.send_header("Content-Type", "image/png" if status == 200 else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on a slow image
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _pool(path: Path, base: str) -> None:
    rows = []
    for i in range(48):
        kind = "broken" if i % 12 == 5 else "slow" if i == 7 else "missing" if i % 12 == 9 else "ok"
        colour = list(COLOURS)[i % 4]
        rows.append({"url": f"{base}/{kind}/{i}.png", "caption": f"a {colour} square, number {i}", "n": i})
    rows.append({"url": f"{base}/ok/0.png", "caption": "a red square again", "n": 99})  # duplicate URL
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.slow
def test_curated_list_downloads_into_shards_that_train(tmp_path, server):
    _pool(tmp_path / "pool.parquet", server)
    result = curate(str(tmp_path / "pool.parquet"), ["blue", "green", "red", "yellow"], tmp_path / "curated",
                    CurateConfig(cap=10), progress=False)
    assert result.kept == 40 and result.report["duplicates"]["duplicate_url"] == 1
    selected = pq.read_table(tmp_path / "curated" / "selected").to_pylist()
    summary = download(tmp_path / "curated", tmp_path / "shards",
                       DownloadConfig(image_size=32, processes=1, threads=8, shard_size=16, timeout=3.0))
    expected_ok = sum(1 for r in selected if "/ok/" in r["url"])
    assert summary["count"] == 40, summary
    assert summary["successes"] == expected_ok
    assert summary["failed_to_download"] + summary["failed_to_resize"] == 40 - expected_ok
    assert any("404" in e for e in summary["errors"]), summary["errors"]

    samples = {}
    for shard in sorted((tmp_path / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    assert len(samples) == expected_ok
    by_uid = {r["uid"]: r for r in selected}
    for sample in samples.values():
        meta = json.loads(sample["json"])
        assert sample["txt"].decode() == by_uid[meta["uid"]]["caption"]  # the pair stayed a pair
        assert "/ok/" in meta["url"]
    sizes = json.loads((tmp_path / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == expected_ok

    _train_on(tmp_path / "shards", sorted(sizes), tmp_path, [s["txt"].decode() for s in samples.values()])


def _train_on(shards: Path, names: list[str], tmp: Path, captions: list[str]) -> None:
    from clipforge.train.config import load_config
    from clipforge.train.loop import Trainer

    (tmp / "captions.txt").write_text("\n".join(captions) + "\n")
    recipe = {
        "run": {"steps": 3, "seed": 0, "threads": 1, "out": str(tmp / "run")},
        "model": {"name": "tiny-rn", "text": {"context_length": 16}},
        "tokenizer": {"source": "learn", "vocab_size": 600, "captions": str(tmp / "captions.txt")},
        "data": {"shards": "::".join(str(shards / n) for n in names), "batch_size": 4, "workers": 0},
        "schedule": {"warmup_steps": 1},
        "checkpoint": {"every": 0},
        "log": {"every": 1, "tensorboard": False},
    }
    (tmp / "recipe.json").write_text(json.dumps(recipe))
    summary = Trainer(load_config(tmp / "recipe.json"), echo=lambda message: None).train()
    assert summary["step"] == 3 and summary["loss"] == summary["loss"]  # finite (NaN != NaN)
    assert (tmp / "run" / "final").is_dir()
