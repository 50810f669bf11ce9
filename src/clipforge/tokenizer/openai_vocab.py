"""Where OpenAI's merges file comes from: a path, $CLIPFORGE_OPENAI_VOCAB, or the user cache.

The file is not shipped with clipforge. `download_openai_vocab()` fetches it once from OpenAI's
repository and checks its SHA-256; nothing else in clipforge touches the network.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from clipforge.paths import cache_dir

OPENAI_VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
OPENAI_VOCAB_URL = "https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz"
OPENAI_VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
ENV_VAR = "CLIPFORGE_OPENAI_VOCAB"


def resolve_openai_vocab(path: str | Path | None = None) -> Path:
    """The merges file to use: `path` → $CLIPFORGE_OPENAI_VOCAB → the cache directory."""
    candidates = [("the path given", path), (f"${ENV_VAR}", os.environ.get(ENV_VAR) or None)]
    for origin, candidate in candidates:
        if candidate is not None:
            p = Path(candidate).expanduser()
            if not p.is_file():
                raise FileNotFoundError(f"OpenAI BPE vocabulary not found at {p} ({origin})")
            return p
    cached = cache_dir() / OPENAI_VOCAB_FILENAME
    if cached.is_file():
        return cached
    raise FileNotFoundError(
        f"OpenAI's BPE vocabulary ({OPENAI_VOCAB_FILENAME}) was not found. Either run "
        f"`python -c 'import clipforge.tokenizer as t; t.download_openai_vocab()'` (or "
        f"`clipforge tokenizer download-openai`) once while online, which stores it as {cached}; "
        f"or set ${ENV_VAR} to a local copy; or pass its path."
    )


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_openai_vocab(
    directory: str | Path | None = None,
    url: str = OPENAI_VOCAB_URL,
    sha256: str = OPENAI_VOCAB_SHA256,
    force: bool = False,
) -> Path:
    """Download OpenAI's merges file into `directory` (default: the cache dir), verify its SHA-256,
    and return its path. An existing file with the right checksum is reused."""
    target = Path(directory).expanduser() if directory else cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    dest = target / OPENAI_VOCAB_FILENAME
    if dest.is_file() and not force and sha256_of(dest) == sha256:
        return dest
    fd, tmp = tempfile.mkstemp(dir=target, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while block := response.read(1 << 20):
                out.write(block)
        got = sha256_of(tmp)
        if got != sha256:
            raise OSError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}")
        os.replace(tmp, dest)  # atomic: a reader never sees a partial file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest
