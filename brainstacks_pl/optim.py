"""The optimizer + warmup/cosine schedule every stack-training phase uses."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["lr_factor", "stack_optimizers"]


def lr_factor(step: int, warmup: int, total: int, floor: float, cosine: bool) -> float:
    """Linear warmup to 1, then cosine down to ``floor`` at ``total`` (or flat when not cosine)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if not cosine:
        return 1.0
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def stack_optimizers(
    parameters: Iterable[torch.nn.Parameter],
    optimizer_factory: Callable[[list], torch.optim.Optimizer],
    total_steps: int,
    warmup_steps: int,
    scheduler: str = "cosine",
    min_lr_ratio: float = 0.1,
) -> dict[str, Any]:
    """``configure_optimizers`` output for the trainable (active-stack) parameters."""
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise RuntimeError("no trainable parameters: add a stack before fitting")
    optimizer = optimizer_factory(params)
    total = max(int(total_steps), 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, total, min_lr_ratio, scheduler == "cosine")
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
