"""Golden tests: the tiny random models of the reference give the reference's outputs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import clipforge
from clipforge.checkpoint import infer_config, read_state_dict

TOL = 1e-5


@pytest.mark.parametrize("name", ["tiny_vit", "tiny_resnet"])
def test_reference_outputs(reference_dir, name):
    path = reference_dir / "parity" / f"{name}.safetensors"
    io = load_file(str(reference_dir / "parity" / f"{name}_io.safetensors"))
    model, _, _ = clipforge.load(path)  # architecture inferred from the shapes alone
    with torch.no_grad():
        image_features = model.encode_image(io["images"])
        text_features = model.encode_text(io["tokens"])
        logits_per_image, logits_per_text = model.logits(io["images"], io["tokens"])
    torch.testing.assert_close(image_features, io["image_features"], atol=TOL, rtol=0)
    torch.testing.assert_close(text_features, io["text_features"], atol=TOL, rtol=0)
    torch.testing.assert_close(logits_per_image, io["logits_per_image"], atol=TOL * 100, rtol=TOL)
    torch.testing.assert_close(logits_per_text, io["logits_per_image"].t(), atol=TOL * 100, rtol=TOL)


@pytest.mark.parametrize("name, registered", [("tiny_vit", "tiny-vit"), ("tiny_resnet", "tiny-rn")])
def test_inferred_architecture_equals_registered_config(reference_dir, name, registered):
    state = read_state_dict(reference_dir / "parity" / f"{name}.safetensors")
    assert infer_config(state) == clipforge.registry.get_config(registered)


def test_forward_returns_normalized_features_and_scale(reference_dir):
    io = load_file(str(reference_dir / "parity" / "tiny_vit_io.safetensors"))
    model, _, _ = clipforge.load(reference_dir / "parity" / "tiny_vit.safetensors")
    with torch.no_grad():
        image_features, text_features, scale = model(io["images"], io["tokens"])
    torch.testing.assert_close(image_features.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(text_features.norm(dim=-1), torch.ones(6))
    torch.testing.assert_close(scale * image_features @ text_features.t(), io["logits_per_image"], atol=1e-3, rtol=1e-5)
