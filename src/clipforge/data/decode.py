"""Safe decoding of one sample's image and caption bytes.

Web-scale image-text data is dirty: truncated downloads, HTML error pages saved as ``.jpg``,
decompression bombs, empty files, captions in legacy encodings. Every check here raises
:class:`BadSample` with a short machine-readable ``reason`` (one of :data:`REASONS`); the loader
counts and lists them instead of crashing or stalling.

Order of checks for an image (cheapest first, and nothing large is allocated before the size is
known):

1. zero bytes                                   -> ``empty_file``
2. magic bytes of JPEG/PNG/WebP/GIF/BMP/TIFF     -> ``not_an_image``
3. header size (PIL reads only the header here)  -> ``too_large`` when width*height > max_pixels
4. JPEG draft mode: when the shorter side is at least twice ``image_size``, libjpeg decodes at
   1/2, 1/4 or 1/8 scale directly (DCT scaling), never below ``image_size``. This saves most of the
   decode time for large photos; the pixels differ slightly from a full decode + resize, so turn
   it off (``DecodeConfig(draft=False)``) where bit-exact OpenAI preprocessing matters.
5. full decode                                   -> ``corrupt_image`` on truncation/corruption
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

# Every reason the data pipeline can report for a skipped sample.
REASONS = (
    "empty_file",
    "not_an_image",
    "too_large",
    "corrupt_image",
    "missing_image",
    "missing_caption",
    "empty_caption",
    "caption_not_utf8",
    "duplicate_key",
    "truncated_shard",
    "transform_error",
    "bad_label",
)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
CAPTION_EXTS = ("txt", "caption", "text")

# (prefix, offset) magic numbers; enough to tell an image from an HTML page or a text file.
_MAGIC = (
    (b"\xff\xd8\xff", 0),  # JPEG
    (b"\x89PNG\r\n\x1a\n", 0),
    (b"WEBP", 8),  # RIFF....WEBP
    (b"GIF87a", 0),
    (b"GIF89a", 0),
    (b"BM", 0),
    (b"II*\x00", 0),  # TIFF little-endian
    (b"MM\x00*", 0),  # TIFF big-endian
)


class BadSample(Exception):
    """A sample that must be skipped; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodeConfig:
    """Limits for image decoding.

    image_size: the transform's output side, for JPEG draft decoding (the loader fills it in from
        ``transform.image_size`` when left None).
    max_pixels: reject images whose header claims more pixels (default 40 MP, e.g. 8000x5000).
    draft: use JPEG draft decoding for images at least twice ``image_size`` (False: always decode
        at full size, as OpenAI's preprocessing does).
    """

    image_size: int | None = None
    max_pixels: int = 40_000_000
    draft: bool = True


def sniff_image(data: bytes) -> bool:
    """True when ``data`` starts like one of the supported image formats."""
    return any(data[off : off + len(magic)] == magic for magic, off in _MAGIC)


def open_image_header(data: bytes, max_pixels: int) -> Image.Image:
    """Open ``data`` lazily (header only) and enforce the pixel limit before any decoding."""
    if len(data) == 0:
        raise BadSample("empty_file")
    if not sniff_image(data):
        raise BadSample("not_an_image", repr(data[:16]))
    try:
        with warnings.catch_warnings():
            # PIL warns above its own global limit and raises at twice that; our limit is explicit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise BadSample("too_large", str(exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        raise BadSample("corrupt_image", str(exc)) from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise BadSample("corrupt_image", f"size {width}x{height}")
    if width * height > max_pixels:
        raise BadSample("too_large", f"header claims {width}x{height}")
    return img


def decode_image(data: bytes, config: DecodeConfig = DecodeConfig()) -> Image.Image:
    """Decode image bytes into an RGB PIL image, or raise :class:`BadSample`.

    Returns an image of size (W, H) >= (image_size, image_size) on its shorter side when draft mode
    was used; otherwise the stored size.
    """
    img = open_image_header(data, config.max_pixels)
    if config.draft and config.image_size and img.format == "JPEG" and min(img.size) >= 2 * config.image_size:
        # draft() picks the largest DCT scale keeping both sides >= the requested size.
        img.draft("RGB", (config.image_size, config.image_size))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
            # Palette/alpha/CMYK/greyscale all become RGB, as OpenAI's preprocessing does.
            return img if img.mode == "RGB" else img.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise BadSample("too_large", str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data
        raise BadSample("corrupt_image", str(exc)) from None


def decode_caption(data: bytes | None) -> str:
    """Decode caption bytes as UTF-8 (a BOM is tolerated), or raise :class:`BadSample`."""
    if data is None:
        raise BadSample("missing_caption")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadSample("caption_not_utf8", str(exc)) from None
    text = " ".join(text.split())
    if not text:
        raise BadSample("empty_caption")
    return text


def pick(files: dict[str, object], exts: tuple[str, ...]) -> tuple[str, object] | tuple[None, None]:
    """The first (ext, value) of ``files`` whose extension is in ``exts`` (case-insensitive)."""
    lowered = {k.lower(): k for k in files}
    for ext in exts:
        if ext in lowered:
            return ext, files[lowered[ext]]
    return None, None
