"""The benchmarked workloads: the same model shapes, data, optimizer, loss and precision for us and the peers.

Implementations (``impl``):
  ``ours``      clipforge.create_model(<OpenAI name>) with the fast paths named in ``opts``
  ``open_clip`` open_clip.create_model("<name>-quickgelu") (or open_clip.CLIP built from our config
                for the small CPU configs), its ClipLoss and its default attention
  ``hf``        transformers.CLIPModel with the same shapes (ViTs only), its own contrastive loss

Fast-path options for ``ours`` (``opts``, a set of strings):
  ``trim``   cut the token batch after its longest caption (clipforge.fastpath.trim_tokens, done
             once up front as a collate function would, on the host, free)
  ``cl``     channels_last ResNet image tower
  ``fused``  AdamW(fused=True) (default foreach)
  ``compile`` torch.compile of the model+loss forward (its backward is compiled with it)
  ``fold``   inference only: BatchNorm folded into the convolutions
  ``freeze`` inference with ``compile``: inductor freezing (weights as constants, pre-packed on CPU)
  ``whole``  inference on a CPU: the batch in one piece (default: pieces of ~1024 token rows,
             ``InferenceOptions.pieces``), to measure what running in pieces gains
  ``serial`` inference on a CPU: the pieces one after another on all threads (default: one piece
             per thread at a time, ``InferenceOptions.streams``), to measure what the streams gain
  ``plainblocks`` inference: the model's own blocks (default: ``InferenceOptions.fused_blocks``,
             residuals added inside the GEMMs), to measure what fusing gains
Peers take ``compile`` too (torch.compile(model), as open_clip's --torchcompile does).

Data: random images and token rows of realistic caption lengths (SOT + 6..23 ids + EOT = 8..25
tokens, zero-padded to the context length), the same tensors for every implementation.
Optimizer: AdamW lr 5e-4, wd 0.2 on weights only, betas (0.9, 0.98), eps 1e-6. Loss: symmetric
cross-entropy with the learned logit scale, clamped to ≤ 100 after each step without a host sync.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from clipforge import create_model
from clipforge.config import MAX_LOGIT_SCALE, ModelConfig
from clipforge.fastpath import InferenceOptions, channels_last, optimize_for_inference, trim_tokens
from clipforge.registry import get_config

ADAMW = {"lr": 5e-4, "betas": (0.9, 0.98), "eps": 1e-6}
WEIGHT_DECAY = 0.2
OPEN_CLIP_NAMES = {"RN50": "RN50-quickgelu", "RN101": "RN101-quickgelu", "ViT-B/32": "ViT-B-32-quickgelu",
                   "ViT-B/16": "ViT-B-16-quickgelu", "ViT-L/14": "ViT-L-14-quickgelu",
                   "ViT-L/14@336px": "ViT-L-14-336-quickgelu"}


def preload() -> None:
    """Import what the first optimizer / compile pulls in lazily (torch._dynamo, ~150 MB of RSS),
    so that a CPU peak-memory baseline taken after this counts the workload, not the imports.
    (open_clip imports torch._dynamo itself; without this our first AdamW would carry that cost.)"""
    import torch._dynamo  # noqa: F401

    torch.optim.AdamW([nn.Parameter(torch.zeros(1))])


def peer_available(impl: str) -> bool:
    module = {"open_clip": "open_clip", "hf": "transformers"}.get(impl)
    if module is None:
        return impl == "ours"
    try:
        __import__(module)
        return True
    except Exception:  # noqa: BLE001 - a peer that cannot import (e.g. no torchvision) is skipped
        return False


# -------------------------------------------------------------------------------------------- data
def synthetic_batch(batch: int, config: ModelConfig, seed: int = 0, trim: bool = False,
                    device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Random images [B, 3, S, S] and token ids [B, context] with 8..25 real tokens per row.

    Ids follow OpenAI's layout at any vocabulary size: SOT = vocab-2, EOT = vocab-1 (the largest id,
    found by argmax), padding 0. ``trim=True`` returns the tokens trimmed as the fast path does.
    """
    gen = torch.Generator().manual_seed(seed)
    size, ctx, vocab = config.vision.image_size, config.text.context_length, config.text.vocab_size
    images = torch.randn(batch, 3, size, size, generator=gen)
    tokens = torch.zeros(batch, ctx, dtype=torch.long)
    lengths = torch.randint(6, 24, (batch,), generator=gen).clamp(max=ctx - 2)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, 0] = vocab - 2
        tokens[i, 1: n + 1] = torch.randint(1, vocab - 2, (n,), generator=gen)
        tokens[i, n + 1] = vocab - 1
    if trim:
        tokens = trim_tokens(tokens).contiguous()
    return images.to(device), tokens.to(device)


# ------------------------------------------------------------------------------------------ models
def build_model(impl: str, name: str, device: str) -> nn.Module:
    """A freshly initialised model with the shapes of registered model ``name`` (QuickGELU)."""
    config = get_config(name)
    if impl == "ours":
        return create_model(name, device=device)
    if impl == "open_clip":
        return _open_clip_model(name, config).to(device)
    if impl == "hf":
        return _hf_model(config).to(device)
    raise ValueError(f"unknown impl {impl!r}: expected ours, open_clip or hf")


def _open_clip_model(name: str, config: ModelConfig) -> nn.Module:
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    if name in OPEN_CLIP_NAMES:
        return open_clip.create_model(OPEN_CLIP_NAMES[name])
    v, t = config.vision, config.text
    vision = CLIPVisionCfg(layers=v.layers, width=v.width, patch_size=v.patch_size or 16, image_size=v.image_size,
                           head_width=64 if v.kind == "resnet" else v.width // v.num_heads, mlp_ratio=v.mlp_ratio)
    text = CLIPTextCfg(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width,
                       heads=t.num_heads, layers=t.layers, mlp_ratio=t.mlp_ratio)
    return open_clip.CLIP(config.embed_dim, vision, text, quick_gelu=True)


def _hf_model(config: ModelConfig) -> nn.Module:
    from transformers import CLIPConfig, CLIPModel

    v, t = config.vision, config.text
    if v.kind != "vit":
        raise ValueError(f"transformers' CLIPModel has no {v.kind!r} image tower")
    text = {"vocab_size": t.vocab_size, "hidden_size": t.width, "intermediate_size": int(t.width * t.mlp_ratio),
            "num_hidden_layers": t.layers, "num_attention_heads": t.num_heads, "hidden_act": "quick_gelu",
            "max_position_embeddings": t.context_length, "eos_token_id": t.vocab_size - 1,
            "bos_token_id": t.vocab_size - 2, "pad_token_id": 0}
    vision = {"hidden_size": v.width, "intermediate_size": int(v.width * v.mlp_ratio), "num_hidden_layers": v.layers,
              "num_attention_heads": v.num_heads, "image_size": v.image_size, "patch_size": v.patch_size,
              "hidden_act": "quick_gelu"}
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=config.embed_dim)
    cfg._attn_implementation = "sdpa"
    return CLIPModel(cfg)


# ------------------------------------------------------------------------------------------- train
def param_groups(model: nn.Module) -> list[dict]:
    """Weight decay on weights only (the paper's groups; the trainer's own function when present)."""
    try:
        from clipforge.train.optim import param_groups as trainer_groups

        return trainer_groups(model, WEIGHT_DECAY)
    except ImportError:
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
        rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "logit_scale" not in n)]
        return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}]


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy (paper Figure 3) on L2-normalized features [B, D]."""
    logits = scale * image_features @ text_features.t()  # [B, B]
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def make_train_step(impl: str, model: nn.Module, device: str, amp: torch.dtype | None,
                    opts: frozenset[str]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One optimizer step (forward, loss, backward, AdamW, logit-scale clamp) as a closure.

    Nothing in the step reads a value back to the host: the loss is returned as a device tensor.
    """
    model.train()
    if impl == "ours" and "cl" in opts:
        channels_last(model)
    fused = "fused" in opts
    optimizer = torch.optim.AdamW(param_groups(model), **ADAMW, fused=fused or None, foreach=None if fused else True)
    forward_loss = _forward_loss(impl, model)
    if "compile" in opts:
        forward_loss = torch.compile(forward_loss)
    scale_param = model.logit_scale

    def step(images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.split(":")[0], dtype=amp or torch.float32, enabled=amp is not None):
            loss = forward_loss(images, tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            scale_param.clamp_(0, MAX_LOGIT_SCALE)  # in place on the device: no .item(), no sync
        return loss.detach()

    return step


def _forward_loss(impl: str, model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if impl == "hf":
        return lambda images, tokens: model(input_ids=tokens, pixel_values=images, return_loss=True).loss
    if impl == "open_clip":
        from open_clip.loss import ClipLoss

        clip_loss = ClipLoss()
        return lambda images, tokens: clip_loss(*model(images, tokens))
    return lambda images, tokens: contrastive_loss(*model(images, tokens))


# --------------------------------------------------------------------------------------- inference
def make_encoder(impl: str, model: nn.Module, tower: str, amp: torch.dtype | None, cast: bool,
                 opts: frozenset[str]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``encode_image`` or ``encode_text`` in eval mode without autograd.

    ``cast``: weights converted to ``amp`` (pure bf16/fp16) instead of autocast.
    """
    model.eval()
    if cast and amp is not None:
        model.to(amp)
    if impl == "ours":
        model = optimize_for_inference(model, InferenceOptions(
            fold_batchnorm="fold" in opts, channels_last="cl" in opts, compile="compile" in opts,
            freeze="freeze" in opts, pieces="whole" not in opts, streams=1 if "serial" in opts else None,
            fused_blocks="plainblocks" not in opts), inplace=True)
    if impl == "hf":
        fn = model.get_image_features if tower == "image" else model.get_text_features
    else:
        fn = model.encode_image if tower == "image" else model.encode_text
    if impl != "ours" and "compile" in opts:
        fn = torch.compile(fn)
    device_type = next(model.parameters()).device.type
    use_autocast = amp is not None and not cast

    def encode(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device_type, dtype=amp or torch.float32, enabled=use_autocast):
            out = fn(x)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    return encode


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(impl: str, opts: frozenset[str]) -> str:
    return impl + (f"[{','.join(sorted(opts))}]" if opts else "")


def parse_opts(text: str) -> frozenset[str]:
    known = {"trim", "cl", "fused", "compile", "fold", "freeze", "whole", "serial", "plainblocks"}
    opts = frozenset(o for o in text.split(",") if o)
    if opts - known:
        raise ValueError(f"unknown option(s) {sorted(opts - known)}; known: {sorted(known)}")
    return opts


def samples_per_second(batch: int, seconds: float) -> float:
    return batch / seconds if seconds > 0 else math.nan


def result_record(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}
