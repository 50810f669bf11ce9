"""Helpers shared by the data tests: real shard files (good and broken on purpose), a toy tokenizer.

No tests here; the test_data_*.py modules import these (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def jpeg_bytes(seed: int, size: tuple[int, int] = (12, 10), quality: int = 90) -> bytes:
    """A small random JPEG (width, height)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(seed: int, size: tuple[int, int] = (12, 10), mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, "PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose IHDR claims width x height (a decompression bomb header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> list[int]:
    """Write raw members in order; returns each member's data offset (to cut the file mid-member)."""
    buf = io.BytesIO()
    offsets = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            offsets.append(buf.tell() + 512)
            tar.addfile(info, io.BytesIO(data))
    Path(path).write_bytes(buf.getvalue())
    return offsets


def good_members(key: str, seed: int) -> list[tuple[str, bytes]]:
    caption = f"sample {key} with a {['red', 'green', 'blue'][seed % 3]} thing"
    return [(f"{key}.jpg", jpeg_bytes(seed)), (f"{key}.txt", caption.encode()),
            (f"{key}.json", json.dumps({"key": key}).encode())]


def make_shards(folder: Path, sizes: list[int], with_counts: bool = True) -> list[str]:
    """Shards ``folder/00000.tar ...`` of good tiny samples; returns every 'shard/key' id."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for s, n in enumerate(sizes):
        members = []
        for i in range(n):
            key = f"{s:03d}{i:04d}"
            members += good_members(key, s * 1000 + i)
            ids.append(f"{s:05d}.tar/{key}")
        write_tar(folder / f"{s:05d}.tar", members)
    if with_counts:
        (folder / "sizes.json").write_text(json.dumps({f"{s:05d}.tar": n for s, n in enumerate(sizes)}))
    return ids


def bad_shard(path: Path) -> dict[str, str]:
    """A shard with 6 good samples and one of every kind of bad sample; returns {bad key: reason}."""
    jpg = jpeg_bytes(1)
    members = good_members("good0", 0) + good_members("good1", 1) + good_members("good2", 2)
    members += [("trunc.jpg", jpg[: len(jpg) // 2]), ("trunc.txt", b"a cut jpeg")]
    members += [("html.jpg", b"<html><body>404 not found</body></html>"), ("html.txt", b"an error page")]
    members += [("huge.png", png_claiming(20000, 20000)), ("huge.txt", b"a bomb")]
    members += [("zero.jpg", b""), ("zero.txt", b"an empty file")]
    members += [("nocap.jpg", jpeg_bytes(3))]
    members += [("emptycap.jpg", jpeg_bytes(4)), ("emptycap.txt", b"  \n ")]
    members += [("latin1.jpg", jpeg_bytes(5)), ("latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1"))]
    members += good_members("good3", 3) + good_members("good4", 4)
    members += [("good0.jpg", jpeg_bytes(6)), ("good0.txt", b"the same key again")]  # duplicate key
    members += good_members("good5", 5)
    write_tar(path, members)
    return {"trunc": "corrupt_image", "html": "not_an_image", "huge": "too_large", "zero": "empty_file",
            "nocap": "missing_caption", "emptycap": "empty_caption", "latin1": "caption_not_utf8",
            "good0": "duplicate_key"}


def toy_tokenizer(captions: list[str], length: int = 12) -> torch.Tensor:
    """LongTensor [N, length]: word ids by CRC, zero padded (stands in for the BPE tokenizer)."""
    out = torch.zeros(len(captions), length, dtype=torch.long)
    for row, caption in enumerate(captions):
        ids = [zlib.crc32(w.encode()) % 49000 + 1 for w in caption.split()][:length]
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def crop_transform(image: Image.Image, rng: np.random.Generator, size: int = 8) -> torch.Tensor:
    """A train-style transform: random crop from ``rng`` -> FloatTensor [3, size, size]."""
    image = image.resize((size + 4, size + 4))
    left, top = (int(v) for v in rng.integers(0, 5, 2))
    arr = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def plain_transform(image: Image.Image, size: int = 8) -> torch.Tensor:
    arr = np.asarray(image.resize((size, size)), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def fresh_processes() -> mp.context.BaseContext:
    """A forkserver context: each child is a new process forked from a clean server that imported
    torch and the loader once (so starting many children stays cheap on 2 cores)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "clipforge.data.loader", "clipforge.transforms", "test_data_common"])
    return ctx
