"""Downloading released weights, for online users (nothing else in clipforge downloads models).

* OpenAI's TorchScript archives at the URLs of ``clip/clip.py`` (``_MODELS``): each URL embeds the
  file's SHA-256, which is checked after the download. A file goes to a temporary name in the cache
  directory and is renamed into place only once its checksum matches, so an interrupted or corrupted
  download never leaves a file that looks complete.
* Hugging Face Hub repositories (``hf-hub:ORG/NAME``, and the pretrained tags of ``zoo.pretrained``),
  through ``huggingface_hub`` (the ``hub`` extra) into its cache layout under ``cache_dir()/huggingface``:
  the repository's JSON configs first, then the one weight file its layout (``clipforge.layouts``)
  prefers. huggingface_hub resumes an interrupted download; a weight file the Hub stores with a
  SHA-256 (Git LFS: the cache names the file by it) is checked once it has arrived.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from clipforge import layouts
from clipforge.paths import cache_dir
from clipforge.registry import OPENAI_MODELS, canonical_name

_BASE = "https://openaipublic.azureedge.net/clip/models"
# OpenAI's clip/clip.py _MODELS (identical in open_clip's pretrained.py): <sha256>/<file>.
OPENAI_URLS: dict[str, str] = {
    "RN50": f"{_BASE}/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "RN101": f"{_BASE}/8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt",
    "RN50x4": f"{_BASE}/7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt",
    "RN50x16": f"{_BASE}/52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt",
    "RN50x64": f"{_BASE}/be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt",
    "ViT-B/32": f"{_BASE}/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": f"{_BASE}/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": f"{_BASE}/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": f"{_BASE}/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}
assert tuple(OPENAI_URLS) == OPENAI_MODELS
_CHUNK = 1 << 20
HUB_PREFIX = "hf-hub:"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class DownloadError(RuntimeError):
    """A download that failed, was refused, or did not match its checksum."""


def download_openai(name: str, root: str | os.PathLike | None = None) -> Path:
    """The local path of OpenAI's released checkpoint for ``name`` (an OpenAI name or an alias such as
    ``ViT-B-32-quickgelu``), downloading and verifying it on first use."""
    canonical = canonical_name(name)
    if canonical not in OPENAI_URLS:
        raise DownloadError(
            f"{name!r} has no released OpenAI weights (OpenAI released {', '.join(OPENAI_URLS)}; open_clip's "
            "dashed names without -quickgelu are the GELU variants, which OpenAI did not train)"
        )
    return download(OPENAI_URLS[canonical], root)


def download(url: str, root: str | os.PathLike | None = None, sha256: str | None = None) -> Path:
    """Fetch ``url`` into ``root`` (default: ``cache_dir()``) unless a verified copy is already there.

    ``sha256`` defaults to the path component before the file name (OpenAI's URL scheme).
    """
    root = Path(root) if root is not None else cache_dir()
    expected = (sha256 or url.rstrip("/").split("/")[-2]).lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise DownloadError(f"{url}: no SHA-256 to verify against (got {expected!r})")
    target = root / url.rstrip("/").split("/")[-1]
    if target.is_file():
        if sha256_of(target) == expected:
            return target
        print(f"clipforge: {target} does not match its SHA-256; downloading it again")
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=root)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(url, out)
        if digest != expected:
            raise DownloadError(f"{url}: the downloaded file's SHA-256 is {digest}, expected {expected}")
        os.replace(tmp, target)  # atomic: the target appears complete or not at all
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _stream(url: str, out) -> str:
    """Copy ``url`` into the open file ``out`` with a progress bar; the SHA-256 of what was written."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as source:
            total = int(source.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1]) as bar:
                for block in iter(lambda: source.read(_CHUNK), b""):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise DownloadError(
            f"could not download {url} ({err}). Are you offline? Download it elsewhere and pass its path to "
            "clipforge.load, or put it in the cache directory (see clipforge.hub.cache_dir())."
        ) from err
    return digest.hexdigest()


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- the Hugging Face Hub --------------------------------------------------------------------------

def hub_cache(root: str | os.PathLike | None = None) -> Path:
    """huggingface_hub's cache directory for clipforge's downloads: ``root``, else ``cache_dir()/huggingface``."""
    return Path(root) if root is not None else cache_dir() / "huggingface"


def download_hub(repo_id: str, root: str | os.PathLike | None = None, filenames: tuple[str, ...] | None = None) -> Path:
    """The local path of a Hub repository's weight file (in its snapshot directory, beside the
    repository's JSON configs and SentencePiece models, which are small and hold the tokenizer),
    downloading what is missing: the first of ``filenames`` the repository has, by default of the
    weight files its layout names. Offline (``HF_HUB_OFFLINE=1``) only the cache is read."""
    hf = _huggingface_hub()
    cache, offline = str(hub_cache(root)), _offline()
    try:
        snapshot = Path(hf.snapshot_download(repo_id, cache_dir=cache, allow_patterns=["*.json", "*.model"],
                                             local_files_only=offline))
    except (hf.errors.EntryNotFoundError, hf.errors.HfHubHTTPError, OSError, ValueError) as err:
        raise DownloadError(f"{HUB_PREFIX}{repo_id}: could not fetch the repository ({type(err).__name__}: {err})"
                            + (" (offline: HF_HUB_OFFLINE is set and it is not in the cache)" if offline else "")) from err
    names = filenames or layouts.of(snapshot).weights
    for name in names:
        path = snapshot / name
        if not path.is_file():
            try:
                path = Path(hf.hf_hub_download(repo_id, name, revision=snapshot.name, cache_dir=cache,
                                               local_files_only=offline))
            except hf.errors.EntryNotFoundError:  # not in the repository (or, offline, not in the cache)
                continue
            except (hf.errors.HfHubHTTPError, OSError) as err:
                raise DownloadError(f"{HUB_PREFIX}{repo_id}/{name}: download failed ({err}); run again to resume") from err
            verify_blob(path)
        if name.endswith(".index.json"):  # sharded safetensors: fetch each shard the index names
            for shard in sorted(set(json.loads(path.read_text())["weight_map"].values())):
                download_hub(repo_id, root, (shard,))
        return path
    where = "in the cache (HF_HUB_OFFLINE is set)" if offline else "in the repository"
    raise DownloadError(f"{HUB_PREFIX}{repo_id}: none of {', '.join(names)} {where}")


def verify_blob(path: str | os.PathLike) -> None:
    """Check a file from huggingface_hub's cache against the SHA-256 its blob is named by (Git LFS
    files; small Git files are named by their Git hash, which this leaves alone). A mismatch removes
    the blob, so the next call downloads it again."""
    blob = Path(os.path.realpath(path))
    if _SHA256.fullmatch(blob.name) and (digest := sha256_of(blob)) != blob.name:
        blob.unlink()
        raise DownloadError(f"{path}: SHA-256 {digest}, but the Hub published {blob.name}; removed, download it again")


def download_pretrained(entry, root: str | os.PathLike | None = None) -> Path:
    """The weight file of a pretrained tag (a ``zoo.pretrained.Pretrained``) from its ``source``:
    OpenAI's checksummed URL, or its Hub repository ("ORG/NAME", or "ORG/NAME/FILE" naming the file)."""
    if entry.source in OPENAI_URLS.values():
        return download(entry.source, root)
    if entry.source.startswith(HUB_PREFIX):  # open_clip's layout, whatever else the repository holds (timm's copy)
        parts = entry.source[len(HUB_PREFIX):].split("/")
        return download_hub("/".join(parts[:2]), root, ("/".join(parts[2:]),) if parts[2:] else layouts.OPEN_CLIP.weights)
    raise DownloadError(
        f"{entry.model} {entry.tag!r} is not on the Hugging Face Hub under its own name; its weights were released at "
        f"{entry.url}. Download that file and load it: clipforge.load(PATH, model={entry.model!r})"
    )


def _offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.strip().lower() in ("1", "true", "yes", "on")


def _huggingface_hub():
    try:
        import huggingface_hub
        import huggingface_hub.errors  # noqa: F401
    except ImportError as err:
        raise DownloadError("downloading from the Hugging Face Hub needs huggingface_hub: "
                            "pip install 'clipforge[hub]'") from err
    return huggingface_hub
