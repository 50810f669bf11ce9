"""Small generated assets for trying the service without downloads: coloured-shape images and a tiny
random model saved in clipforge's directory format. Used by the tests, the load benchmark and demos."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")


def make_shape_images(folder: str | os.PathLike, count: int, size: int = 64, seed: int = 0) -> list[Path]:
    """``count`` PNGs named ``<colour>_<shape>_<n>.png`` (colour shape on a noisy background) in ``folder``."""
    rng = np.random.default_rng(seed)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        colour = list(COLOURS)[n % len(COLOURS)]
        shape = SHAPES[(n // len(COLOURS)) % len(SHAPES)]
        background = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        image = Image.fromarray(background)
        draw = ImageDraw.Draw(image)
        r = int(size * rng.uniform(0.2, 0.35))
        cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
        box = (cx - r, cy - r, cx + r, cy + r)
        if shape == "circle":
            draw.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            draw.rectangle(box, fill=COLOURS[colour])
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
        path = out / f"{colour}_{shape}_{n:04d}.png"
        image.save(path)
        paths.append(path)
    return paths


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width × height, with a few bytes of pixel data: what a
    decompression bomb looks like to a decoder that trusts the header. For testing pixel limits."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])  # 8-bit RGB
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def make_model_dir(out: str | os.PathLike, name: str = "tiny-vit", merges: str | os.PathLike | None = None,
                   seed: int = 0) -> Path:
    """A randomly initialised registered model + tokenizer, saved with ``checkpoint.save_directory``.

    ``merges``: a BPE merges file (e.g. OpenAI's bpe_simple_vocab_16e6.txt.gz); default OpenAI's
    vocabulary from the user cache (``clipforge.tokenizer``).
    """
    import torch

    from clipforge.checkpoint import save_directory
    from clipforge.factory import create_model
    from clipforge.tokenizer import Tokenizer

    torch.manual_seed(seed)
    model = create_model(name)
    tokenizer = Tokenizer.from_merges(merges) if merges else Tokenizer.openai()
    return save_directory(model, out, tokenizer)





def build_demo(root: str | os.PathLike, merges: str | os.PathLike | None = None, images: int = 40,
               model: str = "tiny-vit") -> dict[str, Path]:
    """Model, images, embeddings and index under ``root`` (in-process; a few seconds on a CPU).

    Returns the paths: {"model", "images", "embeddings", "index"}.
    """
    from clipforge.serve.embed import EmbedConfig, run_embedding
    from clipforge.serve.embed_sources import image_items
    from clipforge.serve.encoder import Encoder
    from clipforge.serve.index import IndexConfig, build_from_embeddings

    root = Path(root)
    paths = {"model": root / "model", "images": root / "images", "embeddings": root / "embeddings",
             "index": root / "index"}
    make_model_dir(paths["model"], model, merges)
    make_shape_images(paths["images"], images)
    encoder = Encoder.load(paths["model"])
    header = {"kind": "image", "source": str(paths["images"]), "model_sha256": encoder.fingerprint(),
              "dim": encoder.dim}
    run_embedding(image_items(str(paths["images"])), encoder.encode_pixels, paths["embeddings"],
                  EmbedConfig(part_size=max(1, images // 2)), header, info={"model": encoder.name},
                  prepare=encoder.preprocess)
    build_from_embeddings(paths["embeddings"], IndexConfig()).save(paths["index"])
    return paths
__all__ = ["COLOURS", "SHAPES", "bomb_png", "build_demo", "make_model_dir", "make_shape_images"]
