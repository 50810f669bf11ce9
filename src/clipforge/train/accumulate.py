"""Gradients of one optimizer step, over one batch or k micro-batches with exact contrastive negatives.

Plain gradient accumulation would be wrong for a contrastive loss: each micro-batch would only see
its own negatives. With ``k`` micro-batches the exact method (GradCache, Gao et al. 2021; open_clip's
``accum_freq``) is used instead:

1. embed every micro-batch without gradients and cache the features;
2. compute the loss over the whole cached batch (gathered over ranks) and backpropagate it to the
   cached features and to the logit scale/bias only;
3. re-embed each micro-batch with gradients and backpropagate the cached feature gradients
   through it.

Step 3's sum over micro-batches is the chain rule of the whole-batch loss, so the gradients equal
those of one batch of k·B samples (same per-micro-batch BatchNorm statistics and dropout masks: the
random state is replayed and BatchNorm's running statistics are updated once per micro-batch).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from clipforge.fastpath import trim_tokens
from clipforge.train.distributed import sync_replicated_grads, unwrap
from clipforge.train.losses import Diagnostics, upcast

Batch = tuple[torch.Tensor, torch.Tensor]  # (images [B, 3, S, S], tokens [B, L])


@dataclass(frozen=True)
class StepContext:
    """How a step runs: the device, autocast, fp16 loss scaling, and whether tokens are trimmed
    (cut after the batch's longest caption, on the host: exact where the text family says so)."""

    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    scale_loss: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss
    trim_tokens: bool = False


def forward_backward(model: nn.Module, micro_batches: Sequence[Batch], ctx: StepContext,
                     ) -> tuple[torch.Tensor, Diagnostics]:
    """Accumulate into ``.grad`` the gradients of the contrastive loss over all micro-batches.

    ``model`` is a :class:`~clipforge.train.objective.TrainModel`, possibly wrapped (DDP/FSDP); its
    ``loss`` component computes the loss. ``ctx.scale_loss`` multiplies the loss before backward
    (fp16 loss scaling). Returns the unscaled loss (detached) and its diagnostics.
    """
    loss_fn = unwrap(model).loss
    if len(micro_batches) == 1:
        images, tokens = _to(micro_batches[0], ctx)
        with ctx.autocast():
            image_features, text_features, inputs = model(images, tokens)
        loss, diagnostics = loss_fn(image_features, text_features, **inputs)
        ctx.scale_loss(loss).backward()
    else:
        loss, diagnostics = _grad_cache(model, loss_fn, micro_batches, ctx)
    sync_replicated_grads(model)
    return loss.detach(), diagnostics


def _to(batch: Batch, ctx: StepContext) -> Batch:
    """The batch on the device; tokens trimmed first where that is exact, while still on the host."""
    images, tokens = batch
    if ctx.trim_tokens:
        tokens = trim_tokens(tokens)
    return images.to(ctx.device, non_blocking=True), tokens.to(ctx.device, non_blocking=True)


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _grad_cache(model, loss_fn, micro_batches, ctx: StepContext) -> tuple[torch.Tensor, Diagnostics]:
    device = ctx.device
    buffers = [b.detach().clone() for b in unwrap(model).buffers()]
    rng_states, cached = [], []
    with torch.no_grad():  # 1. embed everything without gradients
        for batch in micro_batches:
            rng_states.append(_rng_state(device))
            images, tokens = _to(batch, ctx)
            with ctx.autocast():
                image_features, text_features, inputs = model(images, tokens)
            cached.append((upcast(image_features), upcast(text_features)))
        for live, saved in zip(unwrap(model).buffers(), buffers):
            live.copy_(saved)  # BatchNorm statistics are updated in step 3 only
    # 2. the loss over the whole batch, backpropagated to the cached features and the loss's inputs
    image_cache = torch.cat([c[0] for c in cached]).requires_grad_()
    text_cache = torch.cat([c[1] for c in cached]).requires_grad_()
    leaves = {name: upcast(value.detach()).requires_grad_() for name, value in inputs.items()}
    loss, diagnostics = loss_fn(image_cache, text_cache, **leaves)
    ctx.scale_loss(loss).backward()
    sizes = [c[0].shape[0] for c in cached]
    image_grads, text_grads = image_cache.grad.split(sizes), text_cache.grad.split(sizes)
    # 3. re-embed each micro-batch with gradients; DDP synchronises on the last one only
    last = len(micro_batches) - 1
    for j, batch in enumerate(micro_batches):
        _set_rng_state(rng_states[j], device)
        images, tokens = _to(batch, ctx)
        with _no_sync(model, j < last):
            with ctx.autocast():
                image_features, text_features, inputs = model(images, tokens)
            outputs, grads = [image_features, text_features], [image_grads[j], text_grads[j]]
            # The loss's inputs are used by every forward; their gradient is added once, with the last
            # one (a zero elsewhere keeps every parameter in the graph, which DDP requires).
            for name, value in inputs.items():
                grad = leaves[name].grad
                outputs.append(value)
                grads.append(grad if j == last else torch.zeros_like(grad))
            pairs = [(o, g.to(o.dtype)) for o, g in zip(outputs, grads) if o.requires_grad]  # locked towers: none
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    return loss.detach(), diagnostics


def _no_sync(model: nn.Module, skip: bool) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` for all but the last micro-batch; FSDP2 defers its reduce-scatter likewise."""
    if skip and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    if hasattr(unwrap(model), "set_requires_gradient_sync"):  # FSDP2
        unwrap(model).set_requires_gradient_sync(not skip)
    return contextlib.nullcontext()
