"""Pure loss functions on plain tensors (each testable without a model)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "IGNORE_INDEX",
    "token_losses",
    "causal_lm_loss",
    "per_sample_lm_loss",
    "dpo_loss",
    "group_advantages",
    "grpo_loss",
    "GRPOLoss",
]

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


# --------------------------------------------------------------------------- preference / RL


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sigmoid DPO (Rafailov et al. 2023, eq. 7) with conservative label smoothing (cDPO).

        h   = (pi_c - ref_c) - (pi_r - ref_r)                    # [B] log-ratio margin
        L_i = -(1 - ls) * log sigmoid(beta h) - ls * log sigmoid(-beta h)

    All inputs are summed response log-probabilities, [B]. Returns ``(mean loss,
    chosen_rewards [B], rejected_rewards [B])`` where a reward is ``beta * (pi - ref)``
    (detached: they are for logging and accuracy only).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_ratio = policy_chosen_logps.float() - ref_chosen_logps.float()  # [B]
    rejected_ratio = policy_rejected_logps.float() - ref_rejected_logps.float()  # [B]
    logits = beta * (chosen_ratio - rejected_ratio)  # [B]
    losses = -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    return losses.mean(), beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def group_advantages(rewards: Tensor, eps: float = 1e-4) -> Tensor:
    """GRPO advantages (Shao et al. 2024): rewards standardised within each prompt's group.

    ``rewards`` [N, G] (N prompts, G completions each) -> [N, G], zero mean per row:
    ``(r - mean_g r) / (std_g r + eps)`` with the unbiased std (as TRL). A group whose rewards
    are all equal has zero advantage: it carries no learning signal. G = 1 gives zeros.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [prompts, group], got shape {tuple(rewards.shape)}")
    rewards = rewards.float()
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # [N, G]
    if rewards.shape[1] < 2:
        return torch.zeros_like(rewards)
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


class GRPOLoss(NamedTuple):
    loss: Tensor
    """Scalar objective to minimise."""
    kl: Tensor
    """Mean per-token KL estimate to the reference (detached; 0 without a reference)."""
    clip_fraction: Tensor
    """Fraction of completion tokens whose ratio was clipped (detached)."""


def grpo_loss(
    logps: Tensor,
    old_logps: Tensor,
    ref_logps: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    kl_coeff: float = 0.0,
) -> GRPOLoss:
    """Clipped GRPO surrogate with an optional k3 KL penalty to the reference policy.

        ratio_t = exp(logp_t - old_logp_t)                       # [N, T]
        s_t     = min(ratio_t A, clip(ratio_t, 1 - eps, 1 + eps) A)
        kl_t    = exp(ref_t - logp_t) - (ref_t - logp_t) - 1     # >= 0, unbiased (Schulman k3)
        L       = mean_i [ sum_t mask (-s_t + kl_coeff kl_t) / sum_t mask ]

    ``logps``/``old_logps``/``ref_logps`` are per-token log-probabilities of the sampled
    completion tokens [N, T], ``advantages`` [N] (one per completion), ``mask`` [N, T] marks
    real completion tokens. Each sequence is averaged over its own tokens, then over sequences
    (the GRPO paper's normalisation). Rows with no tokens are left out.
    """
    mask = mask.to(logps.dtype)
    ratio = torch.exp(logps - old_logps.detach())  # [N, T]
    adv = advantages.detach().to(logps.dtype).unsqueeze(1)  # [N, 1]
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    per_token = -torch.minimum(ratio * adv, clipped * adv)  # [N, T]
    if ref_logps is not None and kl_coeff != 0.0:
        diff = ref_logps.detach() - logps  # [N, T]
        kl = torch.exp(diff) - diff - 1.0
        per_token = per_token + kl_coeff * kl
    else:
        kl = torch.zeros_like(logps)
    counts = mask.sum(1)  # [N]
    valid = counts > 0
    total_tokens = counts.sum().clamp_min(1)
    if not bool(valid.any()):
        zero = (logps * 0).sum()
        return GRPOLoss(zero, zero.detach(), zero.detach())
    per_seq = (per_token * mask).sum(1)[valid] / counts[valid]  # [N_valid]
    clip_fraction = (((ratio - clipped).abs() > 0).to(mask.dtype) * mask).sum() / total_tokens
    return GRPOLoss(per_seq.mean(), ((kl * mask).sum() / total_tokens).detach(), clip_fraction.detach())


# --------------------------------------------------------------------------- meta-router


def router_margin_penalty(p: Tensor, margin: float = 0.3) -> Tensor:
    """``mean(relu(margin - |p - 0.5|))``: pushes each sigmoid output away from the undecided 0.5.

    With ``margin=0.3`` an output inside (0.2, 0.8) is penalised linearly; outside it costs nothing.
    """
    return torch.relu(margin - (p - 0.5).abs()).mean()


def router_loss(
    logits_or_probs: Tensor, targets: Tensor, margin_coeff: float = 0.05, margin: float = 0.3, are_probs: bool = False
) -> Tensor:
    """Meta-router loss: per-domain BCE against soft targets + ``margin_coeff`` x margin penalty.

    ``logits_or_probs`` [B, D] are logits (BCE-with-logits, numerically stable) unless
    ``are_probs``; ``targets`` [B, D] in [0, 1]. Sigmoid per domain, never softmax: several
    domains can be on at once.
    """
    if are_probs:
        probs = logits_or_probs
        bce = F.binary_cross_entropy(probs.float(), targets.float())
    else:
        probs = torch.sigmoid(logits_or_probs.float())
        bce = F.binary_cross_entropy_with_logits(logits_or_probs.float(), targets.float())
    return bce + margin_coeff * router_margin_penalty(probs, margin)
