"""ONNX export of both encoders: onnxruntime reproduces PyTorch and the reference outputs within 1e-4."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clipforge import cli
from clipforge.checkpoint import infer_config, read_state_dict
from clipforge.export import ExportConfig, ExportError, check_onnx, export_onnx
from clipforge.model import CLIP
from clipforge.registry import get_config

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'clipforge[onnx]')")
pytest.importorskip("onnxscript", reason="the torch.export-based ONNX exporter needs onnxscript")

ATOL = 1e-4


def _reference_model(reference_dir, name: str) -> CLIP:
    state = read_state_dict(reference_dir / "parity" / f"{name}.safetensors")
    model = CLIP(infer_config(state))
    model.load_state_dict(state)
    return model.eval()


def _run(path, input_name: str, array: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {input_name: array})[0]


def _assert_matches_reference(out_dir, io) -> None:
    # The reference batches (4 images, 6 texts) differ from the export's example batch of 2,
    # so this also checks that the batch axis is dynamic.
    image = _run(out_dir / "image_encoder.onnx", "images", io["images"].numpy())
    text = _run(out_dir / "text_encoder.onnx", "tokens", io["tokens"].numpy())
    assert image.shape == tuple(io["image_features"].shape)
    assert text.shape == tuple(io["text_features"].shape)
    np.testing.assert_allclose(image, io["image_features"].numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(text, io["text_features"].numpy(), atol=ATOL, rtol=0)


@pytest.mark.slow
def test_export_resnet_matches_onnxruntime_and_reference(reference_dir, tmp_path):
    model = _reference_model(reference_dir, "tiny_resnet")
    written = export_onnx(model, tmp_path)
    assert set(written) == {"image", "text"}
    diffs = check_onnx(model, tmp_path, batch=3, atol=ATOL)
    assert set(diffs) == {"image", "text"} and max(diffs.values()) <= ATOL
    _assert_matches_reference(tmp_path, load_file(str(reference_dir / "parity" / "tiny_resnet_io.safetensors")))
    meta = json.loads((tmp_path / "onnx.json").read_text())
    assert meta["image_size"] == 64 and meta["context_length"] == 77 and meta["embed_dim"] == 64
    # The check can fail: the exported graphs no longer match once the weights change.
    with torch.no_grad():
        model.text_projection.mul_(1.01)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        check_onnx(model, tmp_path, atol=ATOL)


@pytest.mark.slow
def test_export_cli_vit_matches_reference(reference_dir, tmp_path, capsys):
    out = tmp_path / "onnx"
    code = cli.main(["export", str(reference_dir / "parity" / "tiny_vit.safetensors"), "--out", str(out)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert max(report["max_abs_diff"].values()) <= ATOL
    _assert_matches_reference(out, load_file(str(reference_dir / "parity" / "tiny_vit_io.safetensors")))


def test_export_rejects_unknown_tower(tmp_path):
    with pytest.raises(ValueError, match="towers"):
        export_onnx(CLIP(get_config("tiny-vit")), tmp_path, ExportConfig(towers=("audio",)))
