"""SigLIP's chunked distributed loss (Zhai et al. 2023, section 3.3 and Figure 1): the texts travel
around a ring of ranks instead of being gathered.

Rank r keeps its B images and, at step k = 0 … R-1, holds the B texts of rank r - k (mod R), which it
passes on to rank r + 1 while receiving the next block from rank r - 1. Each step computes one [B, B]
block of sigmoid terms (the positives lie on the diagonal of step 0), so no rank ever holds more than
B×B logits and the global [R·B, R·B] matrix never exists anywhere; the R blocks of each rank cover its
rows of it exactly once. The shift is differentiable (its backward sends each block's gradient back to
the rank it came from, the same ring the other way round), so the texts' gradients are those of the
whole matrix, as with open_clip's neighbour exchange.

Accuracies (diagnostics, no gradient) are kept as running maxima: each image's best text over the
blocks it sees, and each text's best image, carried along with the texts and sent home at the end.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from clipforge.train.losses import Diagnostics


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shift(x: torch.Tensor, to: int, source: int) -> torch.Tensor:
    """Send ``x`` to rank ``to`` and return what rank ``source`` sends (same shape), concurrently."""
    received = torch.empty_like(x)
    requests = dist.batch_isend_irecv([dist.P2POp(dist.isend, x.contiguous(), to),
                                       dist.P2POp(dist.irecv, received, source)])
    for request in requests:
        request.wait()
    return received


class _RingShift(torch.autograd.Function):
    """Forward: pass ``x`` to the next rank, receive the previous rank's. Backward: the reverse."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, world = _world()
        ctx.next, ctx.previous = (rank + 1) % world, (rank - 1) % world
        return _shift(x, ctx.next, ctx.previous)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _shift(grad, ctx.previous, ctx.next)


def sigmoid_block(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                  logit_bias: torch.Tensor, positives: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(-Σ log σ(z·(scale·x·y + bias)) over a [B, B'] block, the block's logits); z = +1 on the
    diagonal when the block pairs each image with its own text (``positives``), -1 elsewhere."""
    logits = logit_scale * image_features @ text_features.t() + logit_bias  # [B, B']
    signs = -torch.ones_like(logits)
    if positives:
        signs.diagonal().fill_(1.0)
    return -F.logsigmoid(signs * logits).sum(), logits


def ring_siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                     logit_bias: torch.Tensor) -> tuple[torch.Tensor, Diagnostics]:
    """This rank's SigLIP loss over its B images [B, D] against all ranks' texts, by ring exchange.

    Every rank passes the same B. The loss is divided by B (the paper's normalisation); with DDP's
    gradient mean over R ranks the gradients equal one process with the R·B batch. In one process
    it is the single [B, B] block.
    """
    if image_features.shape != text_features.shape:
        raise ValueError(f"image_features {tuple(image_features.shape)} and text_features "
                         f"{tuple(text_features.shape)} must have the same shape [B, D]")
    rank, world = _world()
    batch = image_features.shape[0]
    visiting = text_features
    loss, logits = sigmoid_block(image_features, visiting, logit_scale, logit_bias, positives=True)
    tracker = _Accuracy(logits.detach(), rank, batch)
    for step in range(1, world):
        visiting = _RingShift.apply(visiting)
        block, logits = sigmoid_block(image_features, visiting, logit_scale, logit_bias, positives=False)
        loss = loss + block
        tracker.update(logits.detach(), source=(rank - step) % world)
    diagnostics = {"i2t_acc": tracker.i2t(), "t2i_acc": tracker.t2i(world),
                   "logit_scale": logit_scale.detach().clone(), "logit_bias": logit_bias.detach().clone()}
    return loss / batch, diagnostics


class _Accuracy:
    """Running best matches. Rows: this rank's images over the blocks seen; columns: the visiting texts'
    best image so far, which travel with them (indices are global: rank · B + position)."""

    def __init__(self, logits: torch.Tensor, rank: int, batch: int):
        self.rank, self.batch = rank, batch
        self.mine = torch.arange(batch, device=logits.device) + rank * batch
        self.row_best, self.row_arg = logits.max(dim=1)  # [B]: best text of each image
        self.row_arg = self.row_arg + rank * batch
        self.col_best, col_arg = logits.max(dim=0)  # [B]: best image of each visiting text
        self.col_arg = col_arg + rank * batch

    def update(self, logits: torch.Tensor, source: int) -> None:
        best, arg = logits.max(dim=1)
        better = best > self.row_best
        self.row_best = torch.where(better, best, self.row_best)
        self.row_arg = torch.where(better, arg + source * self.batch, self.row_arg)
        self.col_best, self.col_arg = (_shift(t, *_neighbours()) for t in (self.col_best, self.col_arg))
        best, arg = logits.max(dim=0)
        better = best > self.col_best
        self.col_best = torch.where(better, best, self.col_best)
        self.col_arg = torch.where(better, arg + self.rank * self.batch, self.col_arg)

    def i2t(self) -> torch.Tensor:
        return (self.row_arg == self.mine).float().mean()

    def t2i(self, world: int) -> torch.Tensor:
        col_arg = self.col_arg if world == 1 else _shift(self.col_arg, *_neighbours())  # the texts go home
        return (col_arg == self.mine).float().mean()


def _neighbours() -> tuple[int, int]:
    """(next rank, previous rank): where the ring sends to and receives from."""
    rank, world = _world()
    return (rank + 1) % world, (rank - 1) % world
