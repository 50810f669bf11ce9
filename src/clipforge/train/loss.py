"""Contrastive losses as pure functions of features: CLIP's softmax loss and SigLIP's sigmoid loss.

Both take this rank's features and, for several processes, every rank's features (gathered with
gradients by :func:`clipforge.train.distributed.gather_features`); each rank computes only its own
rows of the similarity matrix, so memory grows linearly with the global batch (paper, Figure 3's
pseudo-code computed the whole N×N matrix on one device). Without ``all_*`` arguments the loss is
the single-process loss.

Averaging: each rank's loss is the mean over its own rows; data-parallel training averages the
gradients over ranks, so R ranks × B samples give exactly the gradient of one process with R·B.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Diagnostics = dict[str, torch.Tensor]


def _rows(image_features: torch.Tensor, text_features: torch.Tensor,
          all_image_features: torch.Tensor | None, all_text_features: torch.Tensor | None,
          offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(all images [N, D], all texts [N, D], labels [B]): the positives of local row i sit at column offset + i."""
    if image_features.shape != text_features.shape:
        raise ValueError(
            f"image_features {tuple(image_features.shape)} and text_features {tuple(text_features.shape)} "
            "must have the same shape [B, D]"
        )
    all_images = image_features if all_image_features is None else all_image_features
    all_texts = text_features if all_text_features is None else all_text_features
    batch = image_features.shape[0]
    if offset + batch > all_texts.shape[0]:
        raise ValueError(f"offset {offset} + local batch {batch} exceeds the global batch {all_texts.shape[0]}")
    labels = torch.arange(offset, offset + batch, device=image_features.device)
    return all_images, all_texts, labels


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    all_image_features: torch.Tensor | None = None,
    all_text_features: torch.Tensor | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, Diagnostics]:
    """Symmetric cross-entropy over the image-text similarity matrix (paper section 2.3, Figure 3).

    ``image_features``/``text_features``: this rank's L2-normalized features [B, D];
    ``all_*``: every rank's features [N, D] (N = world size · B), rank-major; ``offset``: this
    rank's first row in them (rank · B); ``logit_scale``: the multiplier exp(t), a scalar tensor.
    Returns the loss (mean over local rows of the two directions' cross-entropies) and diagnostics:
    image→text and text→image accuracy over the local rows, and the logit scale.
    """
    all_images, all_texts, labels = _rows(image_features, text_features, all_image_features, all_text_features, offset)
    logits_per_image = logit_scale * image_features @ all_texts.t()  # [B, N]
    logits_per_text = logit_scale * text_features @ all_images.t()  # [B, N]
    loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    with torch.no_grad():
        diagnostics = {
            "i2t_acc": (logits_per_image.argmax(dim=1) == labels).float().mean(),
            "t2i_acc": (logits_per_text.argmax(dim=1) == labels).float().mean(),
            "logit_scale": logit_scale.detach().clone(),
        }
    return loss, diagnostics


def siglip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    *,
    all_image_features: torch.Tensor | None = None,
    all_text_features: torch.Tensor | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, Diagnostics]:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023, Algorithm 1): every pair is a binary task.

    Shapes as :func:`clip_loss`; ``logit_bias`` is a learned scalar (SigLIP initialises it to -10 and
    the log scale to ln 10). Each rank takes its image rows against all N texts, which covers the
    N×N matrix once; the loss is -Σ log σ(z·(scale·x·y + bias)) divided by the local batch, the
    paper's normalisation (by |B|, not |B|²).
    """
    all_images, all_texts, labels = _rows(image_features, text_features, all_image_features, all_text_features, offset)
    logits = logit_scale * image_features @ all_texts.t() + logit_bias  # [B, N]
    signs = -torch.ones_like(logits)
    signs[torch.arange(labels.shape[0], device=logits.device), labels] = 1.0  # +1 on the positives
    loss = -F.logsigmoid(signs * logits).sum() / image_features.shape[0]
    with torch.no_grad():
        logits_per_text = text_features @ all_images.t()  # [B, N]; the scale does not change the argmax
        diagnostics = {
            "i2t_acc": (logits.argmax(dim=1) == labels).float().mean(),
            "t2i_acc": (logits_per_text.argmax(dim=1) == labels).float().mean(),
            "logit_scale": logit_scale.detach().clone(),
            "logit_bias": logit_bias.detach().clone(),
        }
    return loss, diagnostics
