"""Pure loss functions on plain tensors (each testable without a model)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IGNORE_INDEX", "token_losses", "causal_lm_loss", "per_sample_lm_loss"]

IGNORE_INDEX = -100


def token_losses(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Next-token cross-entropy per position and the mask of positions that count.

    ``logits`` [B, L, V], ``labels`` [B, L] (``-100`` = ignored: prompt and padding).
    Returns ``(losses [B, L-1] float32, mask [B, L-1] bool)``.
    """
    shift_logits = logits[:, :-1].float()  # [B, L-1, V]
    shift_labels = labels[:, 1:]  # [B, L-1]
    mask = shift_labels != IGNORE_INDEX
    losses = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels.masked_fill(~mask, 0), reduction="none")
    return losses * mask, mask


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token loss over the response tokens of the batch."""
    losses, mask = token_losses(logits, labels)
    return losses.sum() / mask.sum().clamp_min(1)


def per_sample_lm_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample summed loss [B] and token counts [B] (for exact dataset-level means)."""
    losses, mask = token_losses(logits, labels)
    return losses.sum(1), mask.sum(1)
