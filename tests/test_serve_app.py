"""The HTTP service on a real loopback server: endpoints, auth, limits, hostile input (never a 500)."""

from __future__ import annotations

import base64
import io
import json
import os

import httpx
import numpy as np
import pytest
from PIL import Image

from clipforge import cli
from clipforge.serve.app import create_app
from clipforge.serve.encoder import Encoder
from clipforge.serve.index import VectorIndex
from clipforge.serve.limits import Limits
from clipforge.serve.runner import ServerThread
from clipforge.serve.sample import bomb_png, build_demo
from clipforge.serve.service import ServeConfig, Service

TOKEN = "s3cret-token-for-tests"
LIMITS = Limits(max_body_bytes=512 * 1024, max_batch=8, max_pixels=4_000_000, max_text_chars=200, max_labels=16,
                max_k=20)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, reference_dir):
    root = tmp_path_factory.mktemp("serve")
    paths = build_demo(root, reference_dir / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz", images=24)
    paths["encoder"] = Encoder.load(paths["model"])
    paths["index_obj"] = VectorIndex.load(paths["index"])
    return paths


@pytest.fixture(scope="module")
def client(demo):
    service = Service(demo["encoder"], demo["index_obj"], ServeConfig(limits=LIMITS))
    with ServerThread(create_app(service), limits=LIMITS) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def secured(demo):
    service = Service(demo["encoder"], demo["index_obj"], ServeConfig(limits=LIMITS, token=TOKEN))
    with ServerThread(create_app(service), limits=LIMITS) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _png(path) -> bytes:
    return path.read_bytes()


def _first_image(demo):
    return sorted(demo["images"].glob("*.png"))[3]


def test_health_and_binding(client):
    assert client.base_url.host == "127.0.0.1"
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["dim"] == 64 and health["index_size"] == 24
    assert health["auth"] is False and health["url_fetch"] is False


def test_embed_text_matches_the_encoder(client, demo):
    response = client.post("/v1/embed/text", json={"texts": ["a red circle", "a blue square"]})
    assert response.status_code == 200
    body = response.json()
    assert body["dim"] == 64 and len(body["embeddings"]) == 2
    np.testing.assert_allclose(np.array(body["embeddings"]), demo["encoder"].encode_texts(["a red circle",
                                                                                          "a blue square"]), atol=1e-6)


def test_embed_image_multipart_and_base64_agree(client, demo):
    data = _png(_first_image(demo))
    upload = client.post("/v1/embed/image", files=[("files", ("a.png", data, "image/png"))] * 2).json()
    as_json = client.post("/v1/embed/image", json={"images": [base64.b64encode(data).decode()]}).json()
    assert len(upload["embeddings"]) == 2
    np.testing.assert_allclose(upload["embeddings"][0], as_json["embeddings"][0], atol=1e-6)
    direct = demo["encoder"].encode_images([Image.open(io.BytesIO(data)).convert("RGB")])
    np.testing.assert_allclose(as_json["embeddings"][0], direct[0], atol=1e-6)


def test_search_by_text_image_and_row(client, demo):
    hits = client.post("/v1/search", json={"text": "a red circle", "k": 5}).json()["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
    image = _first_image(demo)
    by_image = client.post("/v1/search", files={"file": ("q.png", _png(image), "image/png")}, data={"k": "3"}).json()
    top = by_image["results"][0]
    assert top["id"] == image.stem and top["score"] == pytest.approx(1.0, abs=1e-4)
    by_row = client.post("/v1/search", json={"row": top["row"], "k": 3}).json()["results"]
    assert by_row[0]["row"] == top["row"] and [h["id"] for h in by_row] == [h["id"] for h in by_image["results"]]
    thumb = client.get(top["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (64, 64)


def test_classify_json_and_multipart(client, demo):
    data = _png(_first_image(demo))
    labels = ["red circle", "blue square", "green triangle"]
    body = client.post("/v1/classify", json={"image": base64.b64encode(data).decode(), "labels": labels,
                                             "templates": ["a photo of a {}.", "a drawing of a {}."]}).json()
    probs = [entry["probability"] for entry in body["labels"]]
    assert sorted(e["label"] for e in body["labels"]) == sorted(labels)
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)
    multipart = client.post("/v1/classify", files={"file": ("x.png", data, "image/png")},
                            data={"labels": labels, "templates": ["a photo of a {}.", "a drawing of a {}."]}).json()
    assert multipart["labels"] == body["labels"]


# A small PNG for cases refused before the image is decoded.
GOOD_PNG = base64.b64encode(bomb_png(8, 8)).decode()

HOSTILE_JSON = [
    ("/v1/embed/text", b"\x00\xff\x13 random bytes"),
    ("/v1/embed/text", b'{"texts": 3}'),
    ("/v1/embed/text", b'{"texts": [1, 2]}'),
    ("/v1/embed/text", b"{}"),
    ("/v1/embed/text", b'{"texts": []}'),
    ("/v1/embed/text", b'{"texts": ["   "]}'),
    ("/v1/embed/text", json.dumps({"texts": ["x" * 201]}).encode()),
    ("/v1/embed/text", json.dumps({"texts": ["x"] * 9}).encode()),
    ("/v1/embed/text", b'{"texts": ["a"], "extra": true}'),
    ("/v1/embed/text", b"[" * 50_000),
    ("/v1/embed/text", b"null"),
    ("/v1/embed/image", b'{"images": ["not base64 !!"]}'),
    ("/v1/embed/image", json.dumps({"images": [base64.b64encode(os.urandom(300)).decode()]}).encode()),
    ("/v1/embed/image", b'{"images": []}'),
    ("/v1/embed/image", b'{"images": "abc"}'),
    ("/v1/embed/image", b'{"urls": ["http://127.0.0.1:1/x.png"]}'),
    ("/v1/embed/image", json.dumps({"images": ["data:image/png," + GOOD_PNG]}).encode()),
    ("/v1/search", b"{}"),
    ("/v1/search", b'{"text": "a", "row": 1}'),
    ("/v1/search", b'{"text": "a", "k": 0}'),
    ("/v1/search", b'{"text": "a", "k": 21}'),
    ("/v1/search", b'{"text": "a", "k": "3"}'),
    ("/v1/search", b'{"row": 100000}'),
    ("/v1/search", b'{"row": -1}'),
    ("/v1/search", b'{"text": null, "image": null}'),
    ("/v1/classify", b'{"labels": ["a", "b"]}'),
    ("/v1/classify", b'{"image": "' + GOOD_PNG.encode() + b'", "labels": []}'),
    ("/v1/classify", b'{"image": "' + GOOD_PNG.encode() + b'"}'),
    ("/v1/classify", b'{"image": "' + GOOD_PNG.encode() + b'", "labels": ["a", "a"]}'),
    ("/v1/classify", b'{"image": "' + GOOD_PNG.encode() + b'", "labels": ["a"], "templates": ["no slot"]}'),
    ("/v1/classify", json.dumps({"image": GOOD_PNG, "labels": [str(i) for i in range(17)]}).encode()),
]


@pytest.mark.parametrize("path, body", HOSTILE_JSON, ids=[f"{p}-{i}" for i, (p, _) in enumerate(HOSTILE_JSON)])
def test_hostile_json_gets_a_4xx_with_a_message(client, path, body):
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.json()["error"]


def test_hostile_uploads(client, demo):
    good = _png(_first_image(demo))
    cases = {
        "random bytes": (os.urandom(2000), 400, "not a JPEG/PNG"),
        "truncated png": (good[: len(good) // 2], 400, "truncated or corrupt"),
        "empty file": (b"", 400, "empty"),
        "20000x20000 header": (bomb_png(20000, 20000), 413, "too many pixels"),  # refused by PIL's own header check
        "3000x3000 header": (bomb_png(3000, 3000), 413, "header claims 3000x3000"),  # above our 4 MP limit
    }
    for name, (data, status, message) in cases.items():
        for path, fields in (("/v1/search", {}), ("/v1/classify", {"labels": ["a", "b"]}),
                             ("/v1/embed/image", None)):
            field = "files" if fields is None else "file"
            response = client.post(path, files={field: ("x.png", data, "image/png")}, data=fields or {})
            assert response.status_code == status, (name, path, response.text)
            assert message in response.json()["error"], (name, path, response.text)
    wrong = client.post("/v1/search", files={"file": ("x.png", good, "image/png")}, data={"k": "many"})
    assert wrong.status_code == 422 and "integer" in wrong.json()["error"]
    unknown = client.post("/v1/search", files={"other": ("x.png", good, "image/png")})
    assert unknown.status_code == 422
    text = client.post("/v1/search", content=b"a red circle", headers={"content-type": "text/plain"})
    assert text.status_code == 415


def test_body_limits_by_header_and_while_streaming(client):
    big = b'{"texts": ["' + b"a" * (600 * 1024) + b'"]}'
    response = client.post("/v1/embed/text", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than" in response.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        yield b'{"texts": ["'
        for _ in range(100):
            yield b"a" * 8192
        yield b'"]}'

    streamed = client.post("/v1/embed/text", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    upload = client.post("/v1/embed/image", files={"files": ("x.png", b"\x89PNG" + b"0" * (600 * 1024), "image/png")})
    assert upload.status_code == 413
    assert client.get("/v1/health").status_code == 200


def test_thumbnails_only_for_index_rows(client):
    assert client.get("/thumbs/0").status_code == 200
    for path, status in (("/thumbs/24", 404), ("/thumbs/-1", 404), ("/thumbs/abc", 422),
                         ("/thumbs/..%2f..%2fetc%2fpasswd", 404), ("/thumbs/0/../../etc/passwd", 404),
                         ("/static/../../etc/passwd", 404), ("/v1/nothing", 404)):
        response = client.get(path)
        assert response.status_code == status, (path, response.status_code, response.text)


def test_page_openapi_and_headers(client):
    page = client.get("/")
    assert page.status_code == 200 and "clipforge search" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "http" not in page.text.replace("http-equiv", "")  # no external resources (no CDN)
    spec = client.get("/openapi.json").json()
    assert {"/v1/embed/text", "/v1/embed/image", "/v1/search", "/v1/classify", "/v1/health",
            "/thumbs/{row}"} <= set(spec["paths"])
    content = spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)
    assert "429" in spec["paths"]["/v1/search"]["post"]["responses"]


def test_bearer_token(secured, demo):
    assert secured.get("/v1/health").status_code == 200  # public: load balancers probe it
    assert secured.get("/").status_code == 200 and secured.get("/static/app.js").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
        response = secured.post("/v1/embed/text", json={"texts": ["a"]}, headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
        assert secured.get("/thumbs/0", headers=headers).status_code == 401
    ok = {"Authorization": f"Bearer {TOKEN}"}
    assert secured.post("/v1/embed/text", json={"texts": ["a"]}, headers=ok).status_code == 200
    assert secured.get("/thumbs/0", headers=ok).status_code == 200


def test_serve_cli_defaults_and_refusals(demo, tmp_path, capsys, monkeypatch):
    parser, _ = cli.build_parser(["serve"])
    args = parser.parse_args(["serve", "--index", str(demo["index"])])
    assert args.host == "127.0.0.1" and not args.allow_url_fetch
    monkeypatch.delenv("CLIPFORGE_TOKEN", raising=False)
    assert cli.main(["serve", "--index", str(demo["index"]), "--host", "0.0.0.0"]) == 2
    assert "--no-auth" in capsys.readouterr().err
    assert cli.main(["serve", "--index", str(demo["index"]), "--print-openapi"]) == 0
    assert "/v1/search" in json.loads(capsys.readouterr().out)["paths"]
    empty = tmp_path / "token"
    empty.write_text("\n")
    assert cli.main(["serve", "--index", str(demo["index"]), "--token-file", str(empty)]) == 2
    assert "token file is empty" in capsys.readouterr().err
