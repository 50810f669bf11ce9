"""Hugging Face Hub layouts built in a test: a repository's files in huggingface_hub's cache layout
(for HF_HUB_OFFLINE=1 loads), and a Hub-compatible HTTP server on 127.0.0.1 (for the download path).

The server speaks the parts of the Hub's HTTP API that ``huggingface_hub`` uses to fetch a model
repository: ``/api/models/{repo}/revision/{rev}`` (the commit), ``/api/models/{repo}/tree/{rev}`` (the
file list, with Git LFS SHA-256s), and ``/{repo}/resolve/{rev}/{file}`` (HEAD for metadata, GET with
``Range`` for the bytes). Weight files are LFS files: their ETag is their SHA-256, as on the Hub.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import threading
from pathlib import Path

import torch
from safetensors.torch import save

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def is_lfs(name: str) -> bool:
    return name.endswith((".safetensors", ".bin", ".pt"))


def etag(name: str, data: bytes) -> str:
    """The Hub's ETag: the SHA-256 of an LFS file, the Git blob hash of any other."""
    if is_lfs(name):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_hf_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """``files`` in huggingface_hub's cache layout (blobs named by ETag, snapshot links, refs/main);
    returns the snapshot directory."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for name, data in files.items():
        blob = repo / "blobs" / etag(name, data)
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    return snapshot


def safetensors_bytes(state: dict[str, torch.Tensor]) -> bytes:
    return save({k: v.contiguous() for k, v in state.items()})


def pickle_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """What open_clip writes as open_clip_pytorch_model.bin: ``torch.save(state_dict)``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


class FakeHub:
    """A threaded HTTP server with the Hub's download API for ``repos`` ({repo_id: {file: bytes}}).

    ``cut_first_get``: the first GET of that file name sends half its bytes and drops the connection
    (a client that resumes asks for the rest with ``Range``). ``wrong_etag``: that file's ETag is not
    its SHA-256 (a corrupted transfer). ``requests`` records (method, path, Range header)."""

    def __init__(self, repos: dict[str, dict[str, bytes]], cut_first_get: str | None = None, wrong_etag: str | None = None):
        self.repos, self.cut_first_get, self.wrong_etag = repos, cut_first_get, wrong_etag
        self.requests: list[tuple[str, str, str | None]] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_HEAD(self):
                hub.respond(self, body=False)

            def do_GET(self):
                hub.respond(self, body=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def respond(self, handler, body: bool) -> None:
        path = handler.path.split("?")[0]
        self.requests.append((handler.command, path, handler.headers.get("Range")))
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        repo_id = (api or resolve)[1] if (api or resolve) else None
        if repo_id not in self.repos:
            return self.send(handler, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, body)
        files = self.repos[repo_id]
        if api and api[2] == "revision":
            info = {"id": repo_id, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
            return self.send(handler, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
        if api:
            tree = [{"type": "file", "path": f, "size": len(d), "oid": etag(f + ".git", d),
                     **({"lfs": {"oid": etag(f, d), "size": len(d), "pointerSize": 134}} if is_lfs(f) else {})}
                    for f, d in files.items()]
            return self.send(handler, 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body)
        name = resolve[3]
        if name not in files:
            return self.send(handler, 404, b'{"error": "Entry not found"}', {"X-Error-Code": "EntryNotFound"}, body)
        self.serve_file(handler, name, files[name], body)

    def serve_file(self, handler, name: str, data: bytes, body: bool) -> None:
        tag = "0" * 64 if name == self.wrong_etag else etag(name, data)
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{tag}"', "Accept-Ranges": "bytes"}
        start = int(m[1]) if (m := re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range") or "")) else 0
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if body and name == self.cut_first_get and not start:
            self.cut_first_get = None
            handler.send_response(200)
            for key, value in {**headers, "Content-Length": str(len(data))}.items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(data[: len(data) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            return
        self.send(handler, 206 if start else 200, data[start:], headers, body)

    @staticmethod
    def send(handler, status: int, payload: bytes, headers: dict[str, str], body: bool) -> None:
        handler.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(payload))}.items():
            handler.send_header(key, value)
        handler.end_headers()
        if body:
            handler.wfile.write(payload)
