"""Server-side URL fetching refuses loopback/private/link-local targets (also behind DNS and redirects);
bearer-token helpers. Uses a real HTTP server on loopback, let through only where a test allows it."""

from __future__ import annotations

import http.server
import ipaddress
import threading
import time

import httpx
import pytest

from clipforge.serve.limits import InputError
from clipforge.serve.security import FetchConfig, UrlFetcher, is_public_address, read_token, token_matches

PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde\x00\x00"
       b"\x00\x0cIDATx\x9cc\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\xc9\xfe\x92\xef\x00\x00\x00\x00IEND\xaeB`\x82")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        port = self.server.server_address[1]
        routes = {
            "/img.png": lambda: self._send(200, PNG, {"Content-Type": "image/png"}),
            "/to-img": lambda: self._send(302, b"", {"Location": "/img.png"}),
            "/to-private": lambda: self._send(302, b"", {"Location": f"http://127.0.0.2:{port}/img.png"}),
            "/to-metadata": lambda: self._send(301, b"", {"Location": "http://169.254.169.254/latest/meta-data"}),
            "/loop": lambda: self._send(302, b"", {"Location": "/loop"}),
            "/big": lambda: self._send(200, b"x" * 3000, {}),
            "/big-unannounced": self._unannounced,
            "/slow": self._slow,
            "/missing": lambda: self._send(404, b"no", {}),
        }
        routes.get(self.path, routes["/missing"])()

    def _send(self, status, body, headers):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _unannounced(self):  # no Content-Length: the cap must hold while reading
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        for _ in range(10):
            self.wfile.write(b"y" * 1000)

    def _slow(self):
        time.sleep(2.0)
        self._send(200, PNG, {})

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def origin():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("2606:4700::1111", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("255.255.255.255", False), ("::1", False), ("fe80::1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:10.0.0.1", False), ("::", False),
])
def test_public_address_table(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/x.png", "http://10.0.0.1/x.png", "http://169.254.169.254/latest/meta-data",
    "http://[::1]/x.png", "http://localhost/x.png", "http://[::ffff:127.0.0.1]/x.png", "http://0.0.0.0/",
    "http://192.168.0.10:8080/admin", "http://2130706433/",  # 127.0.0.1 as an integer
])
def test_refuses_non_public_destinations(url):
    with pytest.raises(InputError) as err:
        UrlFetcher().fetch(url)
    assert err.value.status == 403 and "not a public address" in err.value.message


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://x", "http:///x",
                                 "http://user:pw@example.com/x.png", "javascript:alert(1)", "http://x:99999/"])
def test_refuses_other_schemes_and_malformed_urls(url):
    with pytest.raises(InputError) as err:
        UrlFetcher().fetch(url)
    assert err.value.status == 400


def test_any_private_answer_in_dns_refuses_the_host():
    """A host that resolves to a public and a private address (DNS rebinding setups) is refused."""
    fetcher = UrlFetcher(resolver=lambda host, port: ["93.184.216.34", "127.0.0.1"])
    with pytest.raises(InputError, match="resolves to 127.0.0.1"):
        fetcher.fetch("http://rebind.example/x.png")


def test_allowed_network_fetches_and_checks_every_redirect(origin):
    fetcher = UrlFetcher(FetchConfig(max_bytes=2000, timeout_s=1.0, allow_networks=("127.0.0.1/32",)))
    assert fetcher.fetch(origin + "/img.png") == PNG
    assert fetcher.fetch(origin + "/to-img") == PNG
    for path, status, message in (("/to-private", 403, "127.0.0.2"), ("/to-metadata", 403, "169.254.169.254"),
                                  ("/loop", 502, "redirects"), ("/big", 413, "3000 bytes"),
                                  ("/big-unannounced", 413, "larger than 2000"), ("/missing", 502, "HTTP 404"),
                                  ("/slow", 502, "")):
        with pytest.raises(InputError) as err:
            fetcher.fetch(origin + path)
        assert err.value.status == status and message in err.value.message, (path, err.value.message)


def test_service_url_fetching_is_off_by_default_and_guarded_when_on(tmp_path, reference_dir, origin):
    from clipforge.serve.app import create_app
    from clipforge.serve.encoder import Encoder
    from clipforge.serve.runner import ServerThread
    from clipforge.serve.sample import make_model_dir
    from clipforge.serve.service import ServeConfig, Service

    merges = reference_dir / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
    encoder = Encoder.load(make_model_dir(tmp_path, "tiny-vit", merges))
    port = origin.rsplit(":", 1)[1]
    for allow, expected in ((False, "disabled"), (True, "not a public address")):
        app = create_app(Service(encoder, None, ServeConfig(allow_url_fetch=allow)))
        with ServerThread(app) as server:
            for url in (f"http://localhost:{port}/img.png", f"http://127.0.0.1:{port}/img.png",
                        "http://169.254.169.254/latest/meta-data", f"http://[::1]:{port}/img.png"):
                response = httpx.post(server.url + "/v1/embed/image", json={"urls": [url]})
                assert response.status_code == 403 and expected in response.json()["error"], response.text
            search = httpx.post(server.url + "/v1/search", json={"url": f"http://10.0.0.1/x.png"})
            assert search.status_code == 404  # no index on this server: refused before any fetch


def test_token_helpers(tmp_path, monkeypatch):
    assert token_matches("Bearer abc", "abc")
    assert not any(token_matches(h, "abc") for h in (None, "", "abc", "Bearer ", "Bearer abd", "bearer abc",
                                                     "Bearer abcd", "Basic abc"))
    assert token_matches("Bearer  abc ", "abc")  # surrounding spaces are not part of a token
    monkeypatch.setenv("CLIPFORGE_TOKEN", "from-env")
    assert read_token() == "from-env"
    (tmp_path / "t").write_text("from-file\nignored\n")
    assert read_token(tmp_path / "t") == "from-file"
    monkeypatch.delenv("CLIPFORGE_TOKEN")
    assert read_token() is None
