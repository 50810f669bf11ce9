"""Speed-ups that leave the model's outputs unchanged (up to float rounding).

Each one is optional and measured in ``benchmarks/`` (see ``benchmarks/results/``):

* ``trim_tokens``: cut a token batch after its longest caption. The text tower is causal and reads
  its output at the end-of-text token, so positions after every row's EOT cannot change any
  output. Captions are short (CC3M/LAION median ~12 tokens) against a context of 77, so this removes
  most of the text tower's work. Call it where the lengths are on the host for free (the
  collate function / data loader); on a CUDA tensor it needs one host synchronisation.
* ``channels_last``: NHWC weights and activations for the ModifiedResNet (oneDNN and cuDNN
  convolutions run faster in that layout).
* ``fold_batchnorm``: for inference, fold each eval-mode BatchNorm into the convolution before it.
* ``optimize_for_inference``: the above for an eval-mode model, optionally ``torch.compile``.

The towers themselves skip work nobody reads (the last block computes only the class / end-of-text
token) and, on a CPU in eval mode without autograd, run a batch in cache-sized pieces, one per
intra-op thread at a time (``clipforge.model.pieces``; ``inference_chunk_rows`` and
``inference_streams`` on each tower).

This module is part of the library layer: it imports nothing from data/, train/, eval/ or serve/.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def trimmed_length(tokens: torch.Tensor, multiple: int = 8) -> int:
    """The shortest length that keeps every row's end-of-text token, rounded up to ``multiple``.

    ``tokens`` [N, L] int ids padded with 0 after the EOT, whose id is the largest in the vocabulary
    (``encode_text`` finds it with ``argmax``). The rounding bounds the number of distinct shapes
    (one compiled graph / one cuDNN plan per bucket). Reads a value to the host: a sync on CUDA.
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [N, L], got shape {tuple(tokens.shape)}")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    full = tokens.shape[1]
    if tokens.shape[0] == 0 or full == 0:
        return full
    longest = int(tokens.argmax(dim=1).max()) + 1  # EOT positions are 0-based
    return min(full, -(-longest // multiple) * multiple)


def trim_tokens(tokens: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """Token ids [N, L] → [N, L'] with L' = ``trimmed_length(tokens, multiple)`` ≤ L (a view).

    ``model.encode_text`` gives the same features for both (the causal mask means no position
    attends to a later one, and the output is read at the EOT position, which is kept).
    """
    return tokens[:, : trimmed_length(tokens, multiple)]


def channels_last(model: nn.Module) -> nn.Module:
    """Put a ModifiedResNet image tower's weights in channels_last (NHWC) layout, in place.

    Convolutions then produce NHWC activations, which oneDNN (CPU) and cuDNN (tensor cores) run
    faster; inputs may stay NCHW. A no-op for a ViT, whose single patch convolution gains nothing.
    """
    visual = getattr(model, "visual", model)
    if _has_batchnorm(visual):
        visual.to(memory_format=torch.channels_last)
    return model


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d into that convolution, in place.

    Only valid in eval mode (the running statistics become constants): raises on a training model.
    The BatchNorm modules become ``nn.Identity``, so the forward code is unchanged; the state_dict
    keys change, so save the original model, not the folded one.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model (call model.eval() first)")
    for parent in list(model.modules()):
        children = list(parent.named_children())
        convs = {name: m for name, m in children if isinstance(m, nn.Conv2d)}
        for name, bn in children:
            if not isinstance(bn, nn.BatchNorm2d):
                continue
            conv = convs.get(_conv_before(name, children))
            if conv is None:
                continue
            fused = fuse_conv_bn_eval(conv, bn)
            setattr(parent, _conv_before(name, children), fused)
            setattr(parent, name, nn.Identity())
    return model


def _conv_before(bn_name: str, children: list[tuple[str, nn.Module]]) -> str:
    """The name of the convolution a BatchNorm normalises: ``bnK`` ↔ ``convK`` (ModifiedResNet),
    else the child just before it (``downsample.0`` → ``downsample.1``)."""
    if bn_name.startswith("bn"):
        return "conv" + bn_name[2:]
    names = [n for n, _ in children]
    index = names.index(bn_name)
    return names[index - 1] if index > 0 else ""


@dataclass(frozen=True)
class InferenceOptions:
    """What ``optimize_for_inference`` applies. ``compile`` uses ``torch.compile`` (inductor)."""

    fold_batchnorm: bool = True
    channels_last: bool = True
    compile: bool = False
    compile_mode: str | None = None  # e.g. "max-autotune" on a GPU
    # CPU: inductor "freezing" turns the weights into constants and pre-packs them for oneDNN.
    freeze: bool = False


def optimize_for_inference(model: nn.Module, options: InferenceOptions = InferenceOptions(),
                           inplace: bool = False) -> nn.Module:
    """An eval-mode CLIP made faster for ``encode_image`` / ``encode_text`` (no training).

    By default a copy is changed and the original left untouched; ``inplace=True`` changes
    ``model`` itself (no second copy of the weights in memory). With ``compile=True`` the towers'
    forward passes are compiled on first call (seconds to minutes, once per input shape).
    """
    if model.training:
        raise ValueError("optimize_for_inference needs an eval-mode model (call model.eval() first)")
    fast = model if inplace else copy.deepcopy(model)
    for p in fast.parameters():
        p.requires_grad_(False)
    if options.fold_batchnorm:
        fold_batchnorm(fast)
    if options.channels_last:
        channels_last(fast)
    if options.compile:
        _compile_towers(fast, {"options": {"freezing": True}} if options.freeze else {"mode": options.compile_mode})
    return fast


def _compile_towers(model: nn.Module, kwargs: dict) -> None:
    """Compile each tower's per-piece forward (``_forward`` / ``_encode_text``), in place.

    The pieces a CPU batch is split into (``clipforge.model.pieces``) stay outside the compiled graph, so the
    compiled code runs on cache-sized pieces too; the modules and their state_dict keys are unchanged
    (compiling the module itself would prefix every key with ``_orig_mod.``). The pieces run one after
    another on the caller's threads (``inference_streams = 1``): inductor's CPU kernels fix their
    OpenMP team size when they are compiled, so they must run on the threads they were compiled for.
    """
    visual = getattr(model, "visual", None)
    if visual is not None and hasattr(visual, "_forward"):
        visual._forward = torch.compile(visual._forward, **kwargs)
        visual.inference_streams = 1
    if hasattr(model, "_encode_text"):
        model._encode_text = torch.compile(model._encode_text, **kwargs)
        model.inference_streams = 1
