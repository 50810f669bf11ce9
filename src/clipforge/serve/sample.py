"""Small generated assets for trying the service without downloads: coloured-shape images and a tiny
random model saved in clipforge's directory format. Used by the tests, the load benchmark and demos."""

from __future__ import annotations

import os
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


__all__ = ["COLOURS", "SHAPES", "make_model_dir", "make_shape_images"]
