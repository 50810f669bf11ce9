"""Image preprocessing: OpenAI's eval transform is exact on the reference images; the training crop is
deterministic for a given generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from clipforge.transforms import OPENAI_MEAN, OPENAI_STD, eval_transform, train_transform

IMAGES = ["gray.png", "palette.png", "rgb_tall.jpg", "rgb_wide.png", "rgba.png", "small.jpg"]


@pytest.fixture(scope="module")
def expected(reference_dir):
    return load_file(str(reference_dir / "preprocess" / "expected_224.safetensors"))


@pytest.mark.parametrize("name", IMAGES)
def test_eval_transform_matches_openai(reference_dir, expected, name):
    with Image.open(reference_dir / "preprocess" / name) as image:
        out = eval_transform(224)(image)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected[name], atol=1e-5, rtol=0)


def test_fixture_covers_every_image(expected):
    assert sorted(expected) == sorted(IMAGES)


def _image(w=120, h=90, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_train_transform_is_deterministic_for_a_generator():
    transform, image = train_transform(64, scale=(0.3, 1.0)), _image()
    a = transform(image, np.random.default_rng(7))
    b = transform(image, np.random.default_rng(7))
    c = transform(image, np.random.default_rng(8))
    assert a.shape == (3, 64, 64) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_train_transform_output_is_normalized_pixels():
    white = Image.new("RGB", (80, 100), (255, 255, 255))
    out = train_transform(32)(white, np.random.default_rng(0))
    expected = (1 - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)
    torch.testing.assert_close(out, expected.view(3, 1, 1).expand(3, 32, 32), atol=1e-5, rtol=0)
    gray = train_transform(32)(Image.new("L", (50, 50), 128), np.random.default_rng(0))  # non-RGB input
    assert gray.shape == (3, 32, 32)


@pytest.mark.parametrize("scale", [(0.0, 1.0), (0.9, 0.5), (0.5, 1.5), (-0.1, 0.5)])
def test_train_transform_rejects_bad_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        train_transform(64, scale=scale)


def test_eval_transform_other_sizes():
    out = eval_transform(64)(_image(300, 120))
    assert out.shape == (3, 64, 64)
    small = eval_transform(64)(_image(20, 10))  # upscaled, then cropped
    assert small.shape == (3, 64, 64)


@pytest.mark.parametrize("size", [0, -3, 22.5])
def test_bad_image_size_is_refused(size):
    with pytest.raises(ValueError, match="image_size"):
        eval_transform(size)
    with pytest.raises(ValueError, match="image_size"):
        train_transform(size)
