"""The optimizer + warmup/cosine schedule every stack-training phase uses."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

__all__ = ["lr_factor", "stack_optimizers", "SkipNonFiniteSteps"]


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
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup_steps, total, min_lr_ratio, scheduler == "cosine"))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class SkipNonFiniteSteps:
    """LightningModule mixin (automatic optimization): skip a step whose loss is non-finite on any rank.

    ``training_step`` asks ``nonfinite_anywhere(loss)`` (one all-reduce of a flag: every rank gets
    the same answer) and, if so, returns ``skip_step()``: a loss with exactly zero gradient for
    every trainable parameter, built from the parameters, not from the NaN activations. Every rank
    then runs the same backward (DDP's gradient all-reduce pairs up; Lightning refuses ``None``
    from ``training_step`` under distributed training) and ``optimizer_step`` takes no optimizer
    step, so the weights, the optimizer state and ``global_step`` never see the bad batch.
    """

    last_step_skipped: bool = False

    def nonfinite_anywhere(self, loss: torch.Tensor) -> bool:
        finite = bool(torch.isfinite(loss))
        if getattr(self, "_trainer", None) is not None:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        self.last_step_skipped = not finite
        return not finite

    def skip_step(self) -> torch.Tensor:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.stack([p.sum() for p in params]).sum() * 0.0

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        loss = optimizer_closure()  # training_step + backward, on every rank
        if self.last_step_skipped:
            return
        optimizer.step(closure=lambda: loss)
