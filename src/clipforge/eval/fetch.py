"""Remote sets in CLIP_benchmark's layout, mirrored into the cache before they are read.

Sources:

- a Hugging Face dataset repo: ``hf://datasets/<owner>/<repo>[@revision]``, or the URL form
  CLIP_benchmark's README uses, ``https://huggingface.co/datasets/<owner>/<repo>/tree/<revision>``.
  Files are fetched from ``<endpoint>/datasets/<owner>/<repo>/resolve/<revision>/<path>``, the
  endpoint being ``$HF_ENDPOINT`` (default https://huggingface.co), with ``$HF_TOKEN`` as a bearer
  token when set (for gated repos).
- any other ``http(s)://`` URL of a set's root folder (plain HTTP GETs of the same file names);
- any other fsspec URL (``s3://``, ``gs://``, ...; the fsspec backend must be installed).

Only what a run needs is fetched: the set's three small files (when present), then for each
split asked for, ``nshards.txt`` and its shards. Every file is written to a temporary name and
renamed when complete, so an interrupted download resumes at the first missing shard and no
half-written shard is ever read. Mirrors live in ``<cache>/datasets/<slug>/`` (the cache:
``$CLIPFORGE_CACHE``, else ``~/.cache/clipforge``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Sequence

from clipforge.paths import cache_dir
from clipforge.eval.wds import META_FILES

_CHUNK = 1 << 20
_HF = re.compile(r"^(?:hf://datasets/|https?://huggingface\.co/datasets/)([^/@]+/[^/@]+)(?:@([^/]+)|/tree/([^/]+))?/?$")


class FetchError(RuntimeError):
    """A remote set that could not be fetched (offline, not found, refused)."""


def is_remote(source: str | os.PathLike) -> bool:
    text = str(source)
    return "://" in text and not text.startswith("file://")


def base_url(source: str) -> str:
    """The URL that a set's relative paths (``test/0.tar``) are appended to."""
    match = _HF.match(source)
    if match:
        repo, revision = match.group(1), match.group(2) or match.group(3) or "main"
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        return f"{endpoint}/datasets/{repo}/resolve/{revision}"
    return source.rstrip("/")


def mirror_dir(source: str, root: str | os.PathLike | None = None) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", re.sub(r"^[a-z0-9+]+://", "", source)).strip("_")
    return Path(root) if root is not None else cache_dir() / "datasets" / slug


def mirror(source: str, splits: Sequence[str] = ("test",), root: str | os.PathLike | None = None,
           progress: bool = True) -> Path:
    """Fetch what is missing of ``source``'s metadata and ``splits`` into the mirror; its path."""
    base, local = base_url(source), mirror_dir(source, root)
    local.mkdir(parents=True, exist_ok=True)
    absent_file = local / ".absent.json"
    absent = set(json.loads(absent_file.read_text())) if absent_file.is_file() else set()
    for name in META_FILES:
        if not (local / name).is_file() and name not in absent and not _fetch(f"{base}/{name}", local / name):
            absent.add(name)
    _write_atomic(absent_file, json.dumps(sorted(absent)).encode())
    for split in splits:
        count_file = local / split / "nshards.txt"
        if not count_file.is_file() and not _fetch(f"{base}/{split}/nshards.txt", count_file):
            raise FetchError(f"{base}/{split}/nshards.txt: not found; {source} has no split {split!r} in "
                             "CLIP_benchmark's webdataset layout")
        count = int(count_file.read_text().strip())
        todo = [i for i in range(count) if not (local / split / f"{i}.tar").is_file()]
        if todo and progress:
            print(f"[fetch] {source}: {len(todo)} of {count} {split} shards into {local}", file=sys.stderr, flush=True)
        for i in todo:
            if not _fetch(f"{base}/{split}/{i}.tar", local / split / f"{i}.tar", progress):
                raise FetchError(f"{base}/{split}/{i}.tar: not found (nshards.txt lists {count} shards)")
    return local


def _fetch(url: str, target: Path, progress: bool = False) -> bool:
    """Download ``url`` to ``target`` atomically; False when the server says it does not exist."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            found = _copy(url, out, progress)
        if found:
            os.replace(tmp, target)
        return found
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _SameHostAuth(urllib.request.HTTPRedirectHandler):
    """Follow redirects (Hugging Face sends shards to its CDN) without taking the token off its host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


def _copy(url: str, out, progress: bool) -> bool:
    if not url.startswith(("http://", "https://")):
        return _copy_fsspec(url, out)
    headers = {"User-Agent": "clipforge"}
    if os.environ.get("HF_TOKEN") and "/datasets/" in url:
        headers["Authorization"] = f"Bearer {os.environ['HF_TOKEN']}"
    opener = urllib.request.build_opener(_SameHostAuth)
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            written = _stream(response, out, total, url.rsplit("/", 1)[-1], progress)
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return False
        raise FetchError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        raise FetchError(f"could not fetch {url} ({err}); offline? Download the set elsewhere and pass its "
                         "folder with --dataset-root") from err
    if total is not None and written != total:
        raise FetchError(f"{url}: connection closed after {written} of {total} bytes")
    return True


def _copy_fsspec(url: str, out) -> bool:
    import fsspec

    try:
        with fsspec.open(url, "rb") as source:
            shutil.copyfileobj(source, out, _CHUNK)
    except FileNotFoundError:
        return False
    except Exception as err:  # backends raise their own types; name the URL
        raise FetchError(f"could not fetch {url}: {type(err).__name__}: {err}") from err
    return True


def _stream(source, out, total: int | None, name: str, progress: bool) -> int:
    from tqdm import tqdm

    written = 0
    with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not progress, leave=False) as bar:
        for block in iter(lambda: source.read(_CHUNK), b""):
            out.write(block)
            written += len(block)
            bar.update(len(block))
    return written


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
