"""Overload on a real server: a burst beyond capacity is shed with 429/503 + Retry-After, every request
completes, and the service answers normally afterwards. (Speed is measured by benchmarks/bench_serve.py.)"""

from __future__ import annotations

import io
import threading

import httpx
import pytest
from PIL import Image

from clipforge.serve.app import create_app
from clipforge.serve.encoder import Encoder
from clipforge.serve.limits import Limits
from clipforge.serve.runner import ServerThread
from clipforge.serve.sample import make_model_dir
from clipforge.serve.service import ServeConfig, Service


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, reference_dir):
    root = tmp_path_factory.mktemp("load")
    return Encoder.load(make_model_dir(root, "tiny-vit", reference_dir / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"))


@pytest.fixture(scope="module")
def heavy_request():
    """8 images of 600 × 600 pixels: real decoding and resizing work per request (small to send)."""
    buffer = io.BytesIO()
    Image.new("RGB", (600, 600), (200, 30, 30)).save(buffer, format="PNG")
    return [("files", (f"{i}.png", buffer.getvalue(), "image/png")) for i in range(8)]


def _burst(url: str, files, count: int) -> list[httpx.Response]:
    barrier = threading.Barrier(count)
    responses: list[httpx.Response | Exception] = [None] * count  # type: ignore[list-item]

    def one(i: int) -> None:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            try:
                responses[i] = client.post(url + "/v1/embed/image", files=files)
            except Exception as err:  # recorded: the test fails on any transport error
                responses[i] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    errors = [r for r in responses if not isinstance(r, httpx.Response)]
    assert not errors, errors
    return responses  # type: ignore[return-value]


def test_burst_is_shed_with_429_and_the_service_recovers(encoder, heavy_request):
    limits = Limits(max_concurrency=1, max_queue=2, max_batch=8, queue_timeout_s=30)
    with ServerThread(create_app(Service(encoder, None, ServeConfig(limits=limits))), limits=limits) as server:
        responses = _burst(server.url, heavy_request, 12)
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(200) >= 1 and statuses.count(429) >= 1, statuses
        assert statuses.count(200) + statuses.count(429) == 12
        for r in responses:
            if r.status_code == 429:
                assert r.headers["retry-after"] == "1" and "overloaded" in r.json()["error"]
        health = httpx.get(server.url + "/v1/health").json()
        assert health["in_flight"] == 0 and health["capacity"] == 3
        after = httpx.post(server.url + "/v1/embed/image", files=heavy_request, timeout=60)
        assert after.status_code == 200 and len(after.json()["embeddings"]) == 8


def test_waiting_too_long_in_the_queue_gives_503(encoder, heavy_request):
    limits = Limits(max_concurrency=1, max_queue=8, max_batch=8, queue_timeout_s=0.02)
    with ServerThread(create_app(Service(encoder, None, ServeConfig(limits=limits))), limits=limits) as server:
        statuses = [r.status_code for r in _burst(server.url, heavy_request, 5)]
        assert set(statuses) <= {200, 503} and statuses.count(503) >= 1 and statuses.count(200) >= 1, statuses
        assert httpx.get(server.url + "/v1/health").json()["in_flight"] == 0
