"""Limits on what a request may ask of the service, and safe decoding of untrusted images.

Every limit bounds memory or CPU per request; together with the admission limit (concurrency +
queue) they bound the whole process: at most ``max_concurrency + max_queue`` requests are admitted,
each holding at most ``max_body_bytes`` of input and ``max_batch`` decoded images of at most
``max_pixels`` pixels.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from PIL import Image

from clipforge.data.decode import BadSample, DecodeConfig, decode_image


@dataclass(frozen=True)
class Limits:
    """max_body_bytes: request body (checked from Content-Length, then while streaming).
    max_batch: texts or images per request. max_pixels: width × height from the image header.
    max_text_chars: characters per text. max_labels / max_k: classify labels, search results.
    max_concurrency: requests computing at once. max_queue: admitted requests waiting for a slot;
    beyond that the service answers 429 at once. queue_timeout_s: a waiting request gets 503 after this.
    """

    max_body_bytes: int = 16 * 1024 * 1024
    max_batch: int = 64
    max_pixels: int = 40_000_000
    max_text_chars: int = 2_000
    max_labels: int = 256
    max_k: int = 100
    max_concurrency: int = 2
    max_queue: int = 16
    queue_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_batch", "max_pixels", "max_text_chars", "max_labels", "max_k",
                     "max_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_queue < 0 or self.queue_timeout_s <= 0:
            raise ValueError(f"Limits.max_queue must be >= 0 and queue_timeout_s > 0, got {self.max_queue}, "
                             f"{self.queue_timeout_s}")


class InputError(Exception):
    """A request the service refuses; ``status`` is the HTTP status to answer with (4xx, or 502 upstream)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def open_image(data: bytes, max_pixels: int, what: str = "image") -> Image.Image:
    """Untrusted bytes → RGB PIL image. The size is read from the header and checked before decoding,
    so a decompression bomb costs nothing. Raises :class:`InputError` (413 too large, 400 otherwise)."""
    try:
        return decode_image(data, DecodeConfig(image_size=None, max_pixels=max_pixels))
    except BadSample as err:
        if err.reason == "too_large":
            raise InputError(413, f"{what}: too many pixels ({err.detail or 'header'}); the limit is "
                                  f"{max_pixels} pixels") from None
        reasons = {"empty_file": "is empty", "not_an_image": "is not a JPEG/PNG/WebP/GIF/BMP/TIFF image",
                   "corrupt_image": "is truncated or corrupt"}
        detail = f" ({err.detail})" if err.detail and err.reason == "corrupt_image" else ""
        raise InputError(400, f"{what} {reasons.get(err.reason, err.reason)}{detail}") from None


def decode_base64(text: str, max_bytes: int, what: str = "image") -> bytes:
    """Base64 (standard alphabet, optional ``data:...;base64,`` prefix) → bytes, size-checked first."""
    if not isinstance(text, str):
        raise InputError(422, f"{what}: expected a base64 string")
    if text.startswith("data:"):
        comma = text.find(",")
        if comma < 0 or ";base64" not in text[:comma]:
            raise InputError(400, f"{what}: a data: URL must be base64-encoded ('data:image/png;base64,...')")
        text = text[comma + 1 :]
    if len(text) * 3 // 4 > max_bytes:
        raise InputError(413, f"{what}: larger than {max_bytes} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise InputError(400, f"{what}: not valid base64 ({err})") from None


def check_texts(texts: list[str], limits: Limits, what: str = "texts", max_items: int | None = None) -> None:
    """Non-empty list of non-blank texts, at most ``max_items`` (default max_batch) of max_text_chars each."""
    max_items = limits.max_batch if max_items is None else max_items
    if not texts:
        raise InputError(422, f"{what}: give at least one text")
    if len(texts) > max_items:
        raise InputError(413, f"{what}: {len(texts)} items, the limit is {max_items} per request")
    for i, text in enumerate(texts):
        if not text.strip():
            raise InputError(422, f"{what}[{i}] is empty")
        if len(text) > limits.max_text_chars:
            raise InputError(413, f"{what}[{i}] has {len(text)} characters, the limit is {limits.max_text_chars}")


__all__ = ["InputError", "Limits", "check_texts", "decode_base64", "open_image"]
