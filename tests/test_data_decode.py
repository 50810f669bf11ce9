"""Image and caption decoding: every kind of bad bytes gets its reason; draft mode for big JPEGs."""

from __future__ import annotations

import time

import pytest
from test_data_common import jpeg_bytes, png_bytes, png_claiming

from clipforge.data.decode import BadSample, DecodeConfig, decode_caption, decode_image, open_image_header


def reason_of(fn, *args) -> str:
    with pytest.raises(BadSample) as info:
        fn(*args)
    return info.value.reason


def test_bad_images_get_their_reason():
    jpg = jpeg_bytes(0, (64, 48))
    assert reason_of(decode_image, b"") == "empty_file"
    assert reason_of(decode_image, b"<!DOCTYPE html><html>not found</html>") == "not_an_image"
    assert reason_of(decode_image, jpg[: len(jpg) // 2]) == "corrupt_image"
    assert reason_of(decode_image, jpg[:3] + b"\0" * 40) == "corrupt_image"  # JPEG magic, garbage after


def test_huge_header_is_rejected_before_decoding():
    # 20000 x 20000 x 3 bytes would be 1.2 GB; the header alone must be enough to refuse it.
    start = time.perf_counter()
    assert reason_of(decode_image, png_claiming(20000, 20000)) == "too_large"
    # Below PIL's own bomb limit but above ours: our limit applies, still from the header.
    assert reason_of(open_image_header, png_claiming(9000, 9000), 40_000_000) == "too_large"
    assert time.perf_counter() - start < 1.0
    assert reason_of(decode_image, png_bytes(0, (100, 100)), DecodeConfig(max_pixels=5000)) == "too_large"


def test_good_images_become_rgb():
    for data in (jpeg_bytes(1), png_bytes(1), png_bytes(2, mode="P"), png_bytes(3, mode="RGBA"), png_bytes(4, mode="L")):
        img = decode_image(data)
        assert img.mode == "RGB" and img.size == (12, 10)


def test_draft_mode_for_large_jpegs():
    big = jpeg_bytes(5, (512, 384))
    assert decode_image(big).size == (512, 384)
    small = decode_image(big, DecodeConfig(image_size=64))
    assert small.size == (128, 96)  # DCT scale 1/4: the shorter side stays >= 64
    assert decode_image(big, DecodeConfig(image_size=256)).size == (512, 384)  # not >= 2x: full decode
    assert decode_image(png_bytes(6, (512, 384)), DecodeConfig(image_size=64)).size == (512, 384)
    assert decode_image(big, DecodeConfig(image_size=64, draft=False)).size == (512, 384)


def test_captions():
    assert decode_caption(b"  a red\n circle ") == "a red circle"
    assert decode_caption("\ufeffcaf\u00e9".encode("utf-8")) == "caf\u00e9"
    assert reason_of(decode_caption, None) == "missing_caption"
    assert reason_of(decode_caption, b" \n\t") == "empty_caption"
    assert reason_of(decode_caption, "caf\xe9".encode("latin-1")) == "caption_not_utf8"
