"""ONNX export of CLIP's two encoders, checked against onnxruntime.

Each tower becomes its own ONNX file with a dynamic batch axis, so an image-only or a text-only
deployment loads only what it needs:

- ``image_encoder.onnx``: ``images`` float32 [N, 3, S, S] (already preprocessed with OpenAI's eval
  transform) → ``image_features`` float32 [N, D], projected and *not* normalized (as ``encode_image``).
- ``text_encoder.onnx``: ``tokens`` int64 [N, L] with L the model's context length (padding 0, the
  end-of-text token has the largest id) → ``text_features`` float32 [N, D], not normalized.
- ``onnx.json``: what a consumer needs around the graphs: image size, normalization mean/std,
  context length, embedding dimension, exp(logit_scale), opset, input/output names.

The exporter is PyTorch's ``torch.export``-based one (``dynamo=True``, the default since PyTorch 2.9;
it needs onnxscript). The older TorchScript-based exporter is deprecated in PyTorch 2.13, so it is
not used.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from clipforge.model import CLIP

IMAGE_FILE = "image_encoder.onnx"
TEXT_FILE = "text_encoder.onnx"
META_FILE = "onnx.json"


@dataclass(frozen=True)
class ExportConfig:
    """opset: ONNX opset (18 is the lowest the torch.export-based exporter emits without conversion).
    towers: which encoders to write ("image", "text"). check_atol: max |onnxruntime - torch| allowed."""

    opset: int = 18
    towers: tuple[str, ...] = ("image", "text")
    check_atol: float = 1e-4


class ExportError(RuntimeError):
    """The export failed, or onnxruntime disagrees with PyTorch beyond the tolerance."""


class _ImageEncoder(nn.Module):
    def __init__(self, model: CLIP):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)


class _TextEncoder(nn.Module):
    def __init__(self, model: CLIP):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


def example_inputs(model: CLIP, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of the right shapes: ``images`` [B, 3, S, S] and ``tokens`` [B, L] (EOT placed)."""
    gen = torch.Generator().manual_seed(seed)
    size, text = model.image_size, model.config.text
    images = torch.randn(batch, 3, size, size, generator=gen)
    tokens = torch.randint(1, text.vocab_size - 1, (batch, text.context_length), generator=gen)
    ends = torch.randint(1, text.context_length, (batch,), generator=gen)
    for row, end in enumerate(ends.tolist()):
        tokens[row, end] = text.vocab_size - 1  # the end-of-text id, the largest in the vocabulary
        tokens[row, end + 1 :] = 0
    return {"images": images, "tokens": tokens}


def export_onnx(model: CLIP, out_dir: str | Path, config: ExportConfig = ExportConfig()) -> dict[str, Path]:
    """Write the chosen encoders and ``onnx.json`` into ``out_dir``; returns {tower: path}.

    The model is exported in float32 on the CPU (a copy is made when it lives elsewhere).
    """
    unknown = set(config.towers) - {"image", "text"}
    if unknown or not config.towers:
        raise ValueError(f"towers must be a non-empty subset of ('image', 'text'), got {config.towers}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu", torch.float32).eval()
    inputs = example_inputs(model, batch=2)
    written: dict[str, Path] = {}
    if "image" in config.towers:
        written["image"] = _export_one(_ImageEncoder(model), inputs["images"], "images", "image_features",
                                       out / IMAGE_FILE, config.opset)
    if "text" in config.towers:
        written["text"] = _export_one(_TextEncoder(model), inputs["tokens"], "tokens", "text_features",
                                      out / TEXT_FILE, config.opset)
    (out / META_FILE).write_text(json.dumps(export_metadata(model, config, written), indent=2) + "\n")
    return written


def _export_one(module: nn.Module, example: torch.Tensor, input_name: str, output_name: str,
                path: Path, opset: int) -> Path:
    batch = torch.export.Dim("batch", min=1, max=65536)
    # The exporter logs every stage at INFO and warns about absent torchvision ops: noise for users.
    with warnings.catch_warnings(), _quiet_loggers("torch.onnx", "torch._export", "torch.export"):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module.eval(), (example,), None, input_names=[input_name], output_names=[output_name],
                dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True, verbose=False,
            )
        except Exception as err:  # the exporter raises many error types; name the tower and the cause
            raise ExportError(f"ONNX export of the {input_name} encoder failed: {type(err).__name__}: {err}") from err
    tmp = path.with_name(path.name + ".tmp")
    program.save(str(tmp))
    tmp.replace(path)
    return path


class _quiet_loggers:
    def __init__(self, *names: str):
        self.loggers = [logging.getLogger(n) for n in names]
        self.levels = [lg.level for lg in self.loggers]

    def __enter__(self) -> None:
        for lg in self.loggers:
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        for lg, level in zip(self.loggers, self.levels):
            lg.setLevel(level)


def export_metadata(model: CLIP, config: ExportConfig, written: dict[str, Path]) -> dict:
    return {
        "format": "clipforge-onnx/1",
        "files": {tower: path.name for tower, path in written.items()},
        "inputs": {"image": ["images", "float32", ["batch", 3, model.image_size, model.image_size]],
                   "text": ["tokens", "int64", ["batch", model.config.text.context_length]]},
        "outputs": {"image": "image_features", "text": "text_features"},
        "image_size": model.image_size,
        "mean": list(model.config.preprocess.mean),
        "std": list(model.config.preprocess.std),
        "resize": model.config.preprocess.resize,
        "interpolation": model.config.preprocess.interpolation,
        "context_length": model.config.text.context_length,
        "embed_dim": model.config.embed_dim,
        "logit_scale": float(model.logit_scale.detach().exp()),
        # SigLIP: probabilities are sigmoid(logit_scale · cos + logit_bias) per pair (None: CLIP's softmax)
        "logit_bias": None if model.logit_bias is None else float(model.logit_bias.detach()),
        "to_rgb": model.config.preprocess.to_rgb,
        "opset": config.opset,
        "model_config": model.config.to_dict(),
        "export_config": asdict(config),
    }


def check_onnx(model: CLIP, out_dir: str | Path, batch: int = 3, atol: float = 1e-4) -> dict[str, float]:
    """Run the exported files in onnxruntime on a batch size not seen at export; compare with PyTorch.

    Returns {tower: max absolute difference}; raises :class:`ExportError` above ``atol``.
    Raises ImportError when onnxruntime is not installed.
    """
    import onnxruntime as ort

    out = Path(out_dir)
    model = model.to("cpu", torch.float32).eval()
    inputs = example_inputs(model, batch, seed=1)
    towers = {"image": (IMAGE_FILE, "images", model.encode_image), "text": (TEXT_FILE, "tokens", model.encode_text)}
    diffs: dict[str, float] = {}
    for tower, (name, input_name, encode) in towers.items():
        if not (out / name).is_file():
            continue
        session = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        got = session.run(None, {input_name: inputs[input_name].numpy()})[0]  # [B, D]
        with torch.no_grad():
            want = encode(inputs[input_name]).float().numpy()
        diffs[tower] = float(np.max(np.abs(got - want)))
        if not diffs[tower] <= atol:
            raise ExportError(f"{out / name}: onnxruntime differs from PyTorch by {diffs[tower]:.3g} > {atol:g}")
    if not diffs:
        raise ExportError(f"{out}: no {IMAGE_FILE} or {TEXT_FILE} to check")
    return diffs


__all__ = ["ExportConfig", "ExportError", "check_onnx", "example_inputs", "export_onnx"]
