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
* ``optimize_for_inference``: the above for an eval-mode model, plus, on a CPU, the batch in
  cache-sized pieces on concurrent single-threaded streams (:mod:`.pieces`) and blocks that add
  their residuals inside the GEMMs (:mod:`.blocks`); optionally ``torch.compile``. The model's
  parameters and state_dict keys are unchanged: the towers' classes are swapped for subclasses.

The model itself only skips work nobody reads (the last block computes only the class / end-of-text
token, in training too). Nothing here runs at import.

This package is part of the library layer: it imports nothing from data/, train/, eval/ or serve/.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from clipforge import families
from clipforge.fastpath.blocks import fuse_blocks
from clipforge.fastpath.pieces import Pieces, run_in_pieces
from clipforge.fastpath.tokens import trim_tokens, trimmed_length, trims_exactly

__all__ = ["trim_tokens", "trimmed_length", "trims_exactly", "channels_last", "fold_batchnorm", "InferenceOptions",
           "optimize_for_inference"]


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
    """What ``optimize_for_inference`` applies. ``compile`` uses ``torch.compile`` (inductor).

    ``pieces``: on a CPU, run a batch in pieces of about ``chunk_rows`` activation rows (None: the
    family's size), ``streams`` at once (None: one per intra-op thread; 1: one after another).
    ``fused_blocks``: transformer blocks add residuals inside the GEMMs when autograd is off.
    """

    fold_batchnorm: bool = True
    channels_last: bool = True
    pieces: bool = True
    chunk_rows: int | None = None
    streams: int | None = None
    fused_blocks: bool = True
    compile: bool = False
    compile_mode: str | None = None  # e.g. "max-autotune" on a GPU
    # CPU: inductor "freezing" turns the weights into constants and pre-packs them for oneDNN.
    freeze: bool = False


def optimize_for_inference(model: nn.Module, options: InferenceOptions = InferenceOptions(),
                           inplace: bool = False) -> nn.Module:
    """An eval-mode CLIP made faster for ``encode_image`` / ``encode_text`` (no training).

    By default a copy is changed and the original left untouched; ``inplace=True`` changes
    ``model`` itself (no second copy of the weights in memory). The state_dict keys are unchanged.
    With ``compile=True`` the towers' per-piece forwards are compiled on first call (seconds to
    minutes, once per input shape); the pieces then run one after another on the caller's threads,
    because inductor's CPU kernels fix their OpenMP team size when they are compiled.
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
    if options.fused_blocks:
        fuse_blocks(fast)
    compile_kwargs = None
    if options.compile:
        compile_kwargs = {"options": {"freezing": True}} if options.freeze else {"mode": options.compile_mode}
    _split_into_pieces(fast, options, compile_kwargs)
    return fast


def _split_into_pieces(model: nn.Module, options: InferenceOptions, compile_kwargs: dict | None) -> None:
    """Give both towers a ``Pieces`` plan and a class whose forward runs it (pieces off: one piece)."""
    vision, text = families.of(model.config.vision), families.of(model.config.text)
    for holder, family, config, method in ((model.visual, vision, model.config.vision, "forward"),
                                           (model, text, model.config.text, "encode_text")):
        if not isinstance(holder, tuple(_PIECED.values())):
            holder.__class__ = _pieced_class(type(holder), method)
        rows = (options.chunk_rows or family.inference_chunk_rows) if options.pieces else None
        streams = 1 if compile_kwargs is not None else options.streams
        holder._clipforge_pieces = Pieces(lambda x, f=family, c=config: f.rows_per_item(c, x), rows, streams)
        if compile_kwargs is not None:
            base = getattr(super(type(holder), holder), method)
            holder._clipforge_pieces.forward = torch.compile(base, **compile_kwargs)


_PIECED: dict[tuple[type, str], type] = {}


def _pieced_class(cls: type, method: str) -> type:
    """A subclass of ``cls`` whose ``method`` runs the instance's ``Pieces`` plan around the original."""
    key = (cls, method)
    if key not in _PIECED:
        def run(self, x: torch.Tensor) -> torch.Tensor:
            return run_in_pieces(self, self._clipforge_pieces, getattr(super(pieced, self), method), x)

        pieced = type(f"Pieced{cls.__name__}", (cls,), {method: run, "__module__": __name__,
                                                       "__doc__": f"{cls.__name__} with CPU inference in pieces."})
        _PIECED[key] = pieced
    return _PIECED[key]
