"""Scenes of the synthetic world: its config, the held-out compositions, and scene sampling.

Shared by the shard writer (:mod:`clipforge.data.synthetic`) and the evaluation sets
(:mod:`clipforge.data.world_eval`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipforge.data.render import COLOURS, POSITIONS, SHAPES, SIZES, Obj, Scene, grid_centre, sample_background


@dataclass(frozen=True)
class WorldConfig:
    """The synthetic world's size and knobs (defaults train the demo model in minutes on 2 cores)."""

    seed: int = 0
    image_size: int = 64
    num_train: int = 20_000
    num_val: int = 1_000
    shard_size: int = 1_000
    eval_per_class: int = 50
    num_retrieval: int = 500
    image_format: str = "jpg"  # train/val shards: "jpg" (fast to decode) or "png" (lossless)
    object_weights: tuple[float, float, float] = (0.6, 0.25, 0.15)  # P(1, 2, 3 objects)
    max_noise: float = 8.0  # training noise std (0-255 scale) is uniform in [0, max_noise]
    shift_noise: float = 35.0  # noise std of the *_shift_noise sets (4x the training maximum)
    heldout_k: int = 4  # k colours x k shapes -> 2k held-out pairs
    colour_only_captions: float = 0.0  # P(a single object's caption names only its colour)
    shape_only_captions: float = 0.0  # P(a single object's caption names only its shape)

    def __post_init__(self) -> None:
        partial = (self.colour_only_captions, self.shape_only_captions)
        if min(partial) < 0 or sum(partial) > 1:
            raise ValueError(f"colour_only_captions and shape_only_captions must be >= 0 with a sum <= 1, got {partial}")


def heldout_pairs(config: WorldConfig) -> list[tuple[str, str]]:
    """The 2k held-out (colour, shape) pairs: each chosen colour and shape in exactly two pairs."""
    k = config.heldout_k
    if not 2 <= k <= min(len(SHAPES), len(COLOURS)):
        raise ValueError(f"heldout_k must be in [2, {len(SHAPES)}], got {k}")
    rng = np.random.default_rng([config.seed, 7])
    colours = [list(COLOURS)[i] for i in rng.choice(len(COLOURS), k, replace=False)]
    shapes = [SHAPES[i] for i in rng.choice(len(SHAPES), k, replace=False)]
    return [pair for i in range(k) for pair in ((colours[i], shapes[i]), (colours[i], shapes[(i + 1) % k]))]


def allowed_pairs(heldout: list[tuple[str, str]]) -> list[tuple[str, str]]:
    held = set(heldout)
    return [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in held]


def _place(rng: np.random.Generator, sizes: list[str]) -> list[tuple[int, float, float, float]] | None:
    """Grid cells, centres and radii with no two shapes touching (None if no layout was found)."""
    for _ in range(30):
        cells = rng.choice(len(POSITIONS), len(sizes), replace=False)
        out = []
        for cell, size in zip(cells, sizes):
            cx, cy = grid_centre(int(cell))
            r = SIZES[size] * rng.uniform(0.9, 1.1)
            out.append((int(cell), cx + rng.uniform(-0.04, 0.04), cy + rng.uniform(-0.04, 0.04), r))
        if all(np.hypot(a[1] - b[1], a[2] - b[2]) >= a[3] + b[3] + 0.02
               for i, a in enumerate(out) for b in out[i + 1:]):
            return out
    return None


def make_scene(rng: np.random.Generator, pairs: list[tuple[str, str]], *, noise: float,
               shifted_background: bool = False, style: str = "filled") -> Scene:
    """A scene with one object per (colour, shape) in ``pairs``; sizes and layout drawn from ``rng``."""
    sizes = [("small", "large")[int(rng.integers(2))] for _ in pairs]
    layout = _place(rng, sizes)
    if layout is None:  # crowded: small shapes always fit the 3x3 grid
        sizes = ["small"] * len(pairs)
        layout = _place(rng, sizes)
    objects = []
    for (colour, shape), size, (cell, x, y, r) in zip(pairs, sizes, layout):
        rgb = tuple(min(255, max(0, v + int(j))) for v, j in zip(COLOURS[colour], rng.integers(-12, 13, 3)))
        objects.append(Obj(shape, colour, size, POSITIONS[cell], round(x, 4), round(y, 4), round(r, 4), rgb))
    return Scene(objects, sample_background(rng, shifted_background), noise, style)


def sample_pairs(rng: np.random.Generator, allowed: list[tuple[str, str]], n: int) -> list[tuple[str, str]]:
    """n distinct allowed (colour, shape) pairs."""
    return [allowed[i] for i in rng.choice(len(allowed), n, replace=False)]


def train_scene(rng: np.random.Generator, config: WorldConfig, allowed: list[tuple[str, str]]) -> Scene:
    n = int(rng.choice(3, p=np.asarray(config.object_weights) / sum(config.object_weights))) + 1
    return make_scene(rng, sample_pairs(rng, allowed, n), noise=float(rng.uniform(0, config.max_noise)))
