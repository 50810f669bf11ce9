"""Drawing the synthetic world: shapes, colours, backgrounds, drawing styles, noise.

A :class:`Scene` is plain data (what is where); :func:`render` turns it into a PIL image. Shapes
are drawn at twice the resolution and box-downsampled, so edges are anti-aliased and small shapes
keep a recognisable outline at 64 px. Object sizes and positions are fractions of the image side,
so a world renders at any resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross", "heart")
COLOURS = {  # saturated hues, far apart, none close to the grey/tinted training backgrounds
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "purple": (140, 60, 200),
    "pink": (245, 120, 190),
    "brown": (140, 90, 40),
}
SIZES = {"small": 0.12, "large": 0.2}  # radius as a fraction of the image side
# 3x3 grid of positions: centres at 0.2/0.5/0.8 keep a large shape inside the frame.
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
_GRID = (0.2, 0.5, 0.8)
STYLES = ("filled", "outline")
# Backgrounds for the shifted set only: hues that never occur as a training background.
SHIFT_BACKGROUNDS = ((20, 140, 140), (130, 130, 20), (20, 30, 110), (90, 110, 140), (190, 180, 120))


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    out = []
    for i in range(2 * points):
        r = 1.0 if i % 2 == 0 else inner
        a = -math.pi / 2 + i * math.pi / points
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


def _heart(n: int = 40) -> list[tuple[float, float]]:
    pts = []
    for i in range(n):
        t = 2 * math.pi * i / n
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 17.0, -(y + 2.5) / 17.0))  # y flipped: image rows grow downwards
    return pts


_C = 0.3  # half width of the cross's arms
# Unit outlines in [-1, 1]^2 (y down); the circle is drawn as an ellipse.
_POLYGONS = {
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": [(0.0, -0.95), (0.95, 0.7), (-0.95, 0.7)],
    "star": _star(),
    "cross": [(-_C, -1), (_C, -1), (_C, -_C), (1, -_C), (1, _C), (_C, _C), (_C, 1), (-_C, 1),
              (-_C, _C), (-1, _C), (-1, -_C), (-_C, -_C)],
    "heart": _heart(),
}


@dataclass
class Obj:
    """One shape: attributes (names) and geometry (fractions of the image side)."""

    shape: str
    colour: str
    size: str
    position: str
    x: float
    y: float
    radius: float
    rgb: tuple[int, int, int]


@dataclass
class Scene:
    """Objects on a background. ``background``: kind, tone, colours (RGB lists), direction."""

    objects: list[Obj]
    background: dict
    noise: float = 0.0
    style: str = "filled"
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        objs = [{"shape": o.shape, "colour": o.colour, "size": o.size, "position": o.position,
                 "x": o.x, "y": o.y, "radius": o.radius} for o in self.objects]
        return {"objects": objs, "background": self.background, "noise": round(self.noise, 2),
                "style": self.style, **self.extra}


def grid_centre(cell: int) -> tuple[float, float]:
    return _GRID[cell % 3], _GRID[cell // 3]


def sample_background(rng: np.random.Generator, shifted: bool = False) -> dict:
    """Training backgrounds are low-saturation plain or gradient; shifted ones are striped/checked."""
    if shifted:
        i, j = rng.choice(len(SHIFT_BACKGROUNDS), 2, replace=False)
        a, b = np.asarray(SHIFT_BACKGROUNDS[i], float), np.asarray(SHIFT_BACKGROUNDS[j], float)
        # Halve the contrast between the two hues: a hard shift, yet shapes stay visible.
        a, b = a + (b - a) * 0.25, b + (a - b) * 0.25
        kind = ("stripes", "checker")[int(rng.integers(2))]
        return {"kind": kind, "tone": "patterned", "colours": [a.astype(int).tolist(), b.astype(int).tolist()],
                "period": int(rng.integers(10, 20))}
    tone = ("light", "dark")[int(rng.integers(2))]
    base = rng.uniform(165, 235) if tone == "light" else rng.uniform(25, 85)
    levels = base + rng.uniform(-20, 20, (2, 1)) + rng.uniform(-12, 12, (2, 3))  # 2 colours, tinted
    colours = np.clip(levels, 0, 255).astype(int).tolist()
    kind = ("plain", "gradient")[int(rng.integers(2))]
    return {"kind": kind, "tone": tone, "colours": colours,
            "direction": ("vertical", "horizontal", "diagonal")[int(rng.integers(3))]}


def _background_array(bg: dict, side: int) -> np.ndarray:
    """float32 [side, side, 3] background."""
    c0, c1 = (np.asarray(c, dtype=np.float32) for c in bg["colours"])
    if bg["kind"] == "plain":
        return np.broadcast_to(c0, (side, side, 3)).copy()
    if bg["kind"] == "gradient":
        ramp = np.linspace(0.0, 1.0, side, dtype=np.float32)
        t = {"vertical": ramp[:, None], "horizontal": ramp[None, :],
             "diagonal": (ramp[:, None] + ramp[None, :]) / 2}[bg["direction"]]
        return c0 + (c1 - c0) * np.broadcast_to(t, (side, side))[..., None]
    period = max(2, bg["period"] * side // 64)
    idx = np.arange(side) // period
    mask = (idx[:, None] + idx[None, :]) % 2 if bg["kind"] == "checker" else np.broadcast_to(idx[None, :] % 2, (side, side))
    return np.where(mask[..., None] == 1, c1, c0)


def _mask(obj: Obj, side: int, style: str, factor: int) -> tuple[np.ndarray, slice, slice]:
    """Coverage float32 [h, w, 1] of the object over its bounding box (rows, cols slices).

    Drawn at ``factor`` x resolution and box-averaged, so edges are anti-aliased.
    """
    cx, cy, r = obj.x * side, obj.y * side, obj.radius * side
    x0, y0 = max(0, int(cx - r) - 2), max(0, int(cy - r) - 2)
    x1, y1 = min(side, int(cx + r) + 3), min(side, int(cy + r) + 3)
    img = Image.new("L", ((x1 - x0) * factor, (y1 - y0) * factor), 0)
    draw = ImageDraw.Draw(img)
    cx, cy, r = (cx - x0) * factor, (cy - y0) * factor, r * factor
    width = max(1, round(side * factor / 28))
    if obj.shape == "circle":
        if style == "outline":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=255, width=width)
        else:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        pts = [(cx + px * r, cy + py * r) for px, py in _POLYGONS[obj.shape]]
        if style == "outline":
            draw.line(pts + pts[:1], fill=255, width=width, joint="curve")
        else:
            draw.polygon(pts, fill=255)
    if factor > 1:
        img = img.reduce(factor)
    alpha = np.asarray(img, dtype=np.float32)[..., None] * (1.0 / 255.0)
    return alpha, slice(y0, y1), slice(x0, x1)


def render(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """RGB image [size, size] of ``scene``; ``rng`` draws the pixel noise.

    Shapes are drawn as coverage masks at twice the resolution (anti-aliased edges) and blended
    over the background in order, so later objects cover earlier ones.
    """
    factor = 2 if size <= 256 else 1
    arr = _background_array(scene.background, size)
    for obj in scene.objects:
        alpha, rows, cols = _mask(obj, size, scene.style, factor)
        region = arr[rows, cols]
        region += alpha * (np.asarray(obj.rgb, dtype=np.float32) - region)
    if scene.noise > 0:
        arr += rng.standard_normal(arr.shape, dtype=np.float32) * scene.noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
