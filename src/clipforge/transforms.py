"""Image preprocessing with PIL and numpy (no torchvision).

The eval transform reproduces OpenAI's exactly: resize the shorter side with PIL bicubic, center
crop, convert to RGB, scale to [0, 1], normalize. The conversion to RGB comes after the resize, as
in OpenAI's and open_clip's pipelines; it matters for palette images, which PIL resizes with
nearest-neighbour sampling. Weights trained otherwise say so in their config's ``preprocess``
(statistics, "squash" resizing to the square without a crop, bilinear sampling): ``preprocess_for``.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import numpy as np
import torch
from PIL import Image

from clipforge.config import OPENAI_MEAN, OPENAI_STD, ModelConfig, PreprocessConfig

_RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
RESIZE_MODES = ("shortest", "squash")
RGB_MODES = ("last", "first_white")


def resize_shorter(image: Image.Image, size: int, resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """Resize so the shorter side is ``size`` (longer side truncated, as torchvision's Resize(int))."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return image
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return image.resize((new_w, new_h), resample)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Center crop to size × size (torchvision's rounding); smaller images are zero-padded first."""
    w, h = image.size
    if w < size or h < size:
        padded = Image.new(image.mode, (max(w, size), max(h, size)))
        padded.paste(image, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
        image, (w, h) = padded, padded.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def rgb_on_white(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited on white (transformers' ``convert_to_rgb``)."""
    if "A" not in image.getbands() and image.info.get("transparency") is None:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def to_tensor(image: Image.Image, mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    """PIL RGB image → normalized float tensor [3, H, W]."""
    # In place on one fresh float32 array: the same roundings as (x / 255 - mean) / std, and no
    # copy of an image that is RGB already (the data loader calls this once per training sample).
    array = np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.float32)  # [H, W, 3]
    array /= 255.0
    array -= np.asarray(mean, dtype=np.float32)
    array /= np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))  # [3, H, W]


class EvalTransform:
    """The eval transform (OpenAI's by default): PIL image → FloatTensor [3, size, size].

    ``resize`` "shortest": shorter side to ``size``, then center crop; "squash": both sides to ``size``.
    ``to_rgb``: "last" (PIL's conversion after the resize) or "first_white" (see ``PreprocessConfig``).
    """

    def __init__(self, image_size: int, mean=OPENAI_MEAN, std=OPENAI_STD, resize: str = "shortest",
                 interpolation: str = "bicubic", to_rgb: str = "last"):
        _check_size(image_size)
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize mode {resize!r}: expected one of {RESIZE_MODES}")
        if interpolation not in _RESAMPLING:
            raise ValueError(f"interpolation {interpolation!r}: expected one of {tuple(_RESAMPLING)}")
        if to_rgb not in RGB_MODES:
            raise ValueError(f"to_rgb {to_rgb!r}: expected one of {RGB_MODES}")
        self.image_size, self.mean, self.std = image_size, mean, std
        self.resize, self.interpolation, self.to_rgb = resize, interpolation, to_rgb

    def __call__(self, image: Image.Image) -> torch.Tensor:
        size, resample = self.image_size, _RESAMPLING[self.interpolation]
        if self.to_rgb == "first_white":
            image = rgb_on_white(image)
        if self.resize == "squash":
            image = image if image.size == (size, size) else image.resize((size, size), resample)
        else:
            image = center_crop(resize_shorter(image, size, resample), size)
        return to_tensor(image, self.mean, self.std)

    def __repr__(self) -> str:
        return f"EvalTransform(image_size={self.image_size}, resize={self.resize!r}, interpolation={self.interpolation!r})"


class TrainTransform:
    """Random resized square crop (the paper's only augmentation), then resize and normalize.

    The randomness comes from the generator passed in, so a data pipeline can derive it from
    (seed, epoch, sample key) and reproduce a run exactly regardless of worker scheduling.
    """

    def __init__(self, image_size: int, scale: tuple[float, float] = (0.9, 1.0), mean=OPENAI_MEAN, std=OPENAI_STD):
        _check_size(image_size)
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        self.image_size, self.scale, self.mean, self.std = image_size, scale, mean, std

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        rng = rng if rng is not None else np.random.default_rng()
        w, h = image.size
        area = w * h * rng.uniform(*self.scale)
        side = max(1, min(w, h, int(round(math.sqrt(area)))))
        left = int(rng.integers(0, w - side + 1))
        top = int(rng.integers(0, h - side + 1))
        whole = (left, top, side, side) == (0, 0, w, h)
        crop = image if whole else image.crop((left, top, left + side, top + side))
        if side != self.image_size:
            crop = crop.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        return to_tensor(crop, self.mean, self.std)

    def __repr__(self) -> str:
        return f"TrainTransform(image_size={self.image_size}, scale={self.scale})"


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, numbers.Integral) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")


def eval_transform(image_size: int, mean=OPENAI_MEAN, std=OPENAI_STD) -> Callable[[Image.Image], torch.Tensor]:
    return EvalTransform(image_size, mean, std)


def train_transform(image_size: int, scale: tuple[float, float] = (0.9, 1.0), mean=OPENAI_MEAN, std=OPENAI_STD):
    return TrainTransform(image_size, scale, mean, std)


def preprocess_for(config: ModelConfig, image_size: int | None = None) -> EvalTransform:
    """The eval transform the model's weights expect (its config's ``preprocess``)."""
    p: PreprocessConfig = config.preprocess
    return EvalTransform(image_size or config.vision.image_size, p.mean, p.std, p.resize, p.interpolation, p.to_rgb)
