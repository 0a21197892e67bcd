"""The capability gap: is a prompt unlike every prompt the router was trained on?

The router's sigmoids cannot say so. Each is trained only on prompts of the run's domains, so
on text it never saw it extrapolates, often confidently: on the demo, out-of-domain prompts
(capitals, translations, German, Japanese) reach ``max_d p_d`` 0.82-0.997 and a gate on ``p``
separates them from held-out in-domain prompts with AUROC 0.75 (``docs/router.md``). Distance
in the router's own input space does better (AUROC 0.99 on the same sets): a class-conditional
Gaussian with one shared covariance over the base-only prompt features, the Mahalanobis
detector of Lee et al. (2018, "A simple unified framework for detecting out-of-distribution
samples and adversarial attacks")::

    f(x)   = mean over the prompt's positions but the first of the router features   [d]
    mu_k   = mean of f over the training prompts of source domain k                  [K, d]
    S      = (1 - s) * within-domain covariance + s * mean(diag) * I                 [d, d]
    W      = S^(-1/2)                                          (stored; float64 when fitted)
    novelty(x) = min_k || W (f(x) - mu_k) ||                   (a Mahalanobis distance)
    gap(x)     = novelty(x) > threshold

The first position is left out of the mean: it is bos, an attention sink whose large hidden
state is the same for every prompt. The shrinkage ``s`` keeps ``S`` invertible when the base
is wider than the number of training prompts. The threshold is calibrated, not guessed: the lowest
novelty of a held-out in-domain (validation) prompt that leaves at most ``false_gap_rate`` of
them above it, so by construction about that fraction of in-domain prompts lose their stacks,
whatever the base's scale. The features are the router's (base-only), so the detector, like the
router, does not change when stacks are added or retrained.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["NoveltyDetector", "fit_novelty", "pooled_features"]

MEANS, WHITEN = "novelty.means", "novelty.whiten"
"""Tensor names in ``router.safetensors`` (next to the router's own weights)."""


def pooled_features(features: Tensor, mask: Tensor) -> Tensor:
    """``[B, T, d]`` router features and ``[B, T]`` mask -> ``[B, d]`` float64 means over the real
    positions but the first (a one-token prompt keeps its only position)."""
    keep = mask.bool().clone()
    longer = keep.sum(1) > 1  # [B]
    keep[longer, 0] = False
    weights = keep.to(torch.float64)[..., None]  # [B, T, 1]
    return (features.to(torch.float64) * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class NoveltyDetector:
    """Domain means and the whitening matrix of the fitted Gaussian, and the calibrated threshold."""

    def __init__(self, means: Tensor, whiten: Tensor, threshold: float):
        if means.ndim != 2 or whiten.shape != (means.shape[1], means.shape[1]):
            raise ValueError(
                f"novelty: means must be [K, d] and the whitening matrix [d, d], "
                f"got {tuple(means.shape)} and {tuple(whiten.shape)}"
            )
        if not (torch.isfinite(means).all() and torch.isfinite(whiten).all()) or not threshold >= 0:
            raise ValueError(f"novelty: the detector's tensors must be finite and its threshold >= 0, got {threshold}")
        self.means, self.whiten, self.threshold = means.to(torch.float64), whiten.to(torch.float64), float(threshold)

    @property
    def d_model(self) -> int:
        return self.means.shape[1]

    def score(self, pooled: Tensor) -> Tensor:
        """Novelty ``[B]`` (float64) of pooled features ``[B, d]``: the distance to the nearest domain."""
        centred = pooled.to(self.means.device, torch.float64)[:, None, :] - self.means[None]  # [B, K, d]
        return (centred @ self.whiten.T).norm(dim=-1).min(dim=1).values  # [B]

    def tensors(self) -> dict[str, Tensor]:
        """What ``router.safetensors`` stores (float32, like the router's weights)."""
        return {MEANS: self.means.float().cpu(), WHITEN: self.whiten.float().cpu()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], threshold: float) -> NoveltyDetector:
        return cls(tensors[MEANS], tensors[WHITEN], threshold)


def fit_novelty(
    train: Tensor, labels: Sequence[int], held_out: Tensor, false_gap_rate: float = 0.05, shrinkage: float = 0.01
) -> NoveltyDetector:
    """Fit on pooled training features ``[N, d]`` with their source domains ``labels`` (ints), and
    calibrate the threshold on pooled held-out in-domain features ``[M, d]``."""
    if not 0.0 <= false_gap_rate < 1.0 or not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"need 0 <= false_gap_rate < 1 and 0 <= shrinkage <= 1, got {false_gap_rate}, {shrinkage}")
    if len(train) < 2 or len(held_out) < 1 or len(labels) != len(train):
        raise ValueError(
            f"novelty: need >= 2 training prompts (one label each) and >= 1 held-out prompt, "
            f"got {len(train)} (labels {len(labels)}) and {len(held_out)}"
        )
    train, held_out = train.to(torch.float64), held_out.to(torch.float64)
    label = torch.as_tensor(list(labels), dtype=torch.long)
    classes = torch.unique(label)
    means = torch.stack([train[label == k].mean(0) for k in classes])  # [K, d]
    centred = train - means[torch.searchsorted(classes, label)]  # [N, d]
    covariance = centred.T @ centred / len(train)  # [d, d]
    scale = covariance.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
    covariance = (1.0 - shrinkage) * covariance + shrinkage * scale * torch.eye(len(covariance), dtype=torch.float64)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    eigenvalues = eigenvalues.clamp_min(scale * 1e-12)  # a zero direction (s = 0) counts as barely spread
    whiten = (eigenvectors * eigenvalues.rsqrt()) @ eigenvectors.T  # S^(-1/2), symmetric
    detector = NoveltyDetector(means, whiten, 0.0)
    scores = detector.score(held_out).sort().values
    allowed = int(false_gap_rate * len(scores))  # held-out prompts that may lie above the threshold
    detector.threshold = scores[len(scores) - 1 - allowed].item()  # the lowest threshold that allows no more
    return detector
