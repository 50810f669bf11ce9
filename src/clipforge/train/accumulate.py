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
from typing import Callable, Sequence

import torch
from torch import nn

from clipforge.fastpath import trim_tokens
from clipforge.train.distributed import sync_replicated_grads, unwrap
from clipforge.train.loss import Diagnostics
from clipforge.train.objective import compute_loss, upcast

Batch = tuple[torch.Tensor, torch.Tensor]  # (images [B, 3, S, S], tokens [B, L])


def forward_backward(model: nn.Module, micro_batches: Sequence[Batch], loss_kind: str, device: torch.device,
                     autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                     scale_loss: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
                     ) -> tuple[torch.Tensor, Diagnostics]:
    """Accumulate into ``.grad`` the gradients of the contrastive loss over all micro-batches.

    ``model`` is a :class:`~clipforge.train.objective.TrainModel`, possibly wrapped (DDP/FSDP).
    ``scale_loss`` multiplies the loss before backward (fp16 loss scaling). Returns the unscaled
    loss (detached) and its diagnostics.
    """
    if len(micro_batches) == 1:
        images, tokens = _to(micro_batches[0], device)
        with autocast():
            outputs = model(images, tokens)
        loss, diagnostics = compute_loss(loss_kind, *outputs)
        scale_loss(loss).backward()
    else:
        loss, diagnostics = _grad_cache(model, micro_batches, loss_kind, device, autocast, scale_loss)
    sync_replicated_grads(model)
    return loss.detach(), diagnostics


def _to(batch: Batch, device: torch.device) -> Batch:
    """The batch on ``device``; tokens cut after the longest caption first (exact: the text tower
    is causal and read at the end-of-text token), while they are still on the host."""
    images, tokens = batch
    return images.to(device, non_blocking=True), trim_tokens(tokens).to(device, non_blocking=True)


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _grad_cache(model, micro_batches, loss_kind, device, autocast, scale_loss) -> tuple[torch.Tensor, Diagnostics]:
    buffers = [b.detach().clone() for b in unwrap(model).buffers()]
    rng_states, cached = [], []
    with torch.no_grad():  # 1. embed everything without gradients
        for batch in micro_batches:
            rng_states.append(_rng_state(device))
            images, tokens = _to(batch, device)
            with autocast():
                image_features, text_features, scale, bias = model(images, tokens)
            cached.append((upcast(image_features), upcast(text_features)))
        for live, saved in zip(unwrap(model).buffers(), buffers):
            live.copy_(saved)  # BatchNorm statistics are updated in step 3 only
    # 2. the loss over the whole batch, backpropagated to the cached features and the loss scalars
    image_cache = torch.cat([c[0] for c in cached]).requires_grad_()
    text_cache = torch.cat([c[1] for c in cached]).requires_grad_()
    scale_leaf = upcast(scale.detach()).requires_grad_()
    bias_leaf = upcast(bias.detach()).requires_grad_() if bias is not None else None
    loss, diagnostics = compute_loss(loss_kind, image_cache, text_cache, scale_leaf, bias_leaf)
    scale_loss(loss).backward()
    sizes = [c[0].shape[0] for c in cached]
    image_grads, text_grads = image_cache.grad.split(sizes), text_cache.grad.split(sizes)
    # 3. re-embed each micro-batch with gradients; DDP synchronises on the last one only
    last = len(micro_batches) - 1
    for j, batch in enumerate(micro_batches):
        _set_rng_state(rng_states[j], device)
        images, tokens = _to(batch, device)
        with _no_sync(model, j < last):
            with autocast():
                image_features, text_features, scale, bias = model(images, tokens)
            outputs, grads = [image_features, text_features], [image_grads[j], text_grads[j]]
            # The loss scalars are used by every forward; their gradient is added once, with the last
            # one (a zero elsewhere keeps every parameter in the graph, which DDP requires).
            outputs.append(scale)
            grads.append(scale_leaf.grad if j == last else torch.zeros_like(scale_leaf.grad))
            if bias is not None:
                outputs.append(bias)
                grads.append(bias_leaf.grad if j == last else torch.zeros_like(bias_leaf.grad))
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
