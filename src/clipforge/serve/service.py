"""What the HTTP endpoints compute, as plain synchronous methods (run on the service's worker threads).

Inputs arrive already parsed into :mod:`clipforge.serve.schemas` models (or raw upload bytes); every
refusal is an :class:`~clipforge.serve.limits.InputError` carrying its HTTP status and message.
"""

from __future__ import annotations

import io
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from threading import Lock

import numpy as np
from PIL import Image

from clipforge.serve.encoder import DEFAULT_TEMPLATES, Encoder
from clipforge.serve.index import VectorIndex
from clipforge.serve.limits import InputError, Limits, check_texts, decode_base64, open_image
from clipforge.serve.schemas import ClassifyRequest, SearchRequest
from clipforge.serve.security import FetchConfig, UrlFetcher


@dataclass(frozen=True)
class ServeConfig:
    """limits: see :class:`Limits`. token: bearer token (None: no auth). allow_url_fetch: let requests
    name image URLs (public addresses only, see :mod:`clipforge.serve.security`). thumbnail_size:
    longest side of /thumbs images. thumbnail_cache: thumbnails kept in memory."""

    limits: Limits = field(default_factory=Limits)
    token: str | None = field(default=None, repr=False)
    allow_url_fetch: bool = False
    fetch: FetchConfig = field(default_factory=FetchConfig)
    thumbnail_size: int = 160
    thumbnail_cache: int = 2048


class Service:
    def __init__(self, encoder: Encoder, index: VectorIndex | None, config: ServeConfig):
        if index is not None and index.dim != encoder.dim:
            raise ValueError(f"the index holds {index.dim}-dimensional vectors, the model makes {encoder.dim}")
        self.encoder, self.index, self.config, self.limits = encoder, index, config, config.limits
        self.fetcher = UrlFetcher(config.fetch) if config.allow_url_fetch else None
        self._thumbs: OrderedDict[int, bytes] = OrderedDict()
        self._thumbs_lock = Lock()

    # ---- inputs --------------------------------------------------------------------------------
    def image_from(self, *, data: bytes | None = None, b64: str | None = None, url: str | None = None,
                   what: str = "image") -> Image.Image:
        """Exactly one of raw bytes, base64 or URL → a decoded RGB image, all limits applied."""
        if url is not None:
            if self.fetcher is None:
                raise InputError(403, "fetching image URLs is disabled on this server (start it with "
                                      "--allow-url-fetch); send the image itself instead")
            data = self.fetcher.fetch(url)
        elif b64 is not None:
            data = decode_base64(b64, self.limits.max_body_bytes, what)
        if data is None:
            raise InputError(422, f"{what}: no image given")
        return open_image(data, self.limits.max_pixels, what)

    # ---- endpoints -------------------------------------------------------------------------------
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        check_texts(texts, self.limits)
        return self.encoder.encode_texts(texts)

    def embed_images(self, uploads: list[bytes], b64: list[str], urls: list[str]) -> np.ndarray:
        count = len(uploads) + len(b64) + len(urls)
        if count == 0:
            raise InputError(422, "give at least one image (multipart 'files', or JSON 'images' / 'urls')")
        if count > self.limits.max_batch:
            raise InputError(413, f"{count} images, the limit is {self.limits.max_batch} per request")
        images = [self.image_from(data=d, what=f"files[{i}]") for i, d in enumerate(uploads)]
        images += [self.image_from(b64=s, what=f"images[{i}]") for i, s in enumerate(b64)]
        images += [self.image_from(url=u, what=f"urls[{i}]") for i, u in enumerate(urls)]
        return self.encoder.encode_images(images)

    def search(self, request: SearchRequest, upload: bytes | None = None) -> dict:
        start = time.perf_counter()
        if self.index is None:
            raise InputError(404, "this server has no index (start it with --index DIR)")
        if not 1 <= request.k <= self.limits.max_k:
            raise InputError(422, f"k must be between 1 and {self.limits.max_k}, got {request.k}")
        given = [name for name in ("text", "image", "url", "row") if getattr(request, name) is not None]
        given += ["file"] if upload is not None else []
        if len(given) != 1:
            raise InputError(422, f"give exactly one query of text, image, url, row or file; got {given or 'none'}")
        if request.text is not None:
            query = self.embed_texts([request.text])
        elif request.row is not None:
            if not 0 <= request.row < len(self.index):
                raise InputError(404, f"row {request.row} is not in the index (0..{len(self.index) - 1})")
            query = self.index.faiss_index.reconstruct(request.row)[None]  # [1, D]
        else:
            query = self.encoder.encode_images([self.image_from(data=upload, b64=request.image, url=request.url)])
        scores, rows = self.index.search(query, request.k)
        hits = [{"rank": rank + 1, "row": int(row), "id": self.index.ids[row], "score": float(score),
                 "thumbnail": f"/thumbs/{int(row)}" if self.has_thumbnail(int(row)) else None}
                for rank, (score, row) in enumerate(zip(scores[0], rows[0])) if row >= 0]
        return {"results": hits, "took_ms": round(1000 * (time.perf_counter() - start), 2)}

    def classify(self, request: ClassifyRequest, upload: bytes | None = None) -> dict:
        start = time.perf_counter()
        templates = request.templates if request.templates is not None else list(DEFAULT_TEMPLATES)
        check_texts(request.labels, self.limits, "labels", self.limits.max_labels)
        if len(set(request.labels)) != len(request.labels):
            raise InputError(422, "labels: each label must appear once")
        check_texts(templates, self.limits, "templates", self.limits.max_labels)
        bad = [t for t in templates if "{}" not in t and "{c}" not in t]
        if bad:
            raise InputError(422, f"templates: {bad[0]!r} has no '{{}}' where the label goes")
        if len(request.labels) * len(templates) > self.limits.max_labels:
            raise InputError(413, f"{len(request.labels)} labels × {len(templates)} templates exceed the limit of "
                                  f"{self.limits.max_labels} prompts per request")
        sources = [x for x in (request.image, request.url, upload) if x is not None]
        if len(sources) != 1:
            raise InputError(422, "give exactly one image: 'image' (base64), 'url' or an uploaded 'file'")
        image = self.image_from(data=upload, b64=request.image, url=request.url)
        probs, cosine = self.encoder.classify(self.encoder.encode_images([image]), request.labels, templates)
        order = np.argsort(-probs[0], kind="stable")
        labels = [{"label": request.labels[i], "probability": float(probs[0, i]), "cosine": float(cosine[0, i])}
                  for i in order]
        return {"labels": labels, "took_ms": round(1000 * (time.perf_counter() - start), 2)}

    # ---- thumbnails ------------------------------------------------------------------------------
    def has_thumbnail(self, row: int) -> bool:
        """Thumbnails exist for indexed images that are files (not members of tar shards)."""
        return self.index is not None and 0 <= row < len(self.index) and "#" not in self.index.sources[row]

    def thumbnail(self, row: int) -> bytes:
        """JPEG bytes of the indexed image at ``row``; only rows of the index, never a path from a request."""
        if not self.has_thumbnail(row):
            raise InputError(404, f"no thumbnail for row {row}")
        with self._thumbs_lock:
            if row in self._thumbs:
                self._thumbs.move_to_end(row)
                return self._thumbs[row]
        path = Path(self.index.sources[row])
        try:
            if path.stat().st_size > self.limits.max_body_bytes * 4:
                raise InputError(404, f"row {row}: the image file is too large for a thumbnail")
            image = open_image(path.read_bytes(), self.limits.max_pixels, what=f"row {row}")
        except OSError:
            raise InputError(404, f"row {row}: the image file is no longer readable") from None
        image.thumbnail((self.config.thumbnail_size, self.config.thumbnail_size), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        data = buffer.getvalue()
        with self._thumbs_lock:
            self._thumbs[row] = data
            while len(self._thumbs) > self.config.thumbnail_cache:
                self._thumbs.popitem(last=False)
        return data


__all__ = ["ServeConfig", "Service"]
