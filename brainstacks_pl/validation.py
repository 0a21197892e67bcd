"""Validation loss of a stacked model over a dataloader.

One definition for training, boosting and the forgetting matrix.
"""

from __future__ import annotations

import torch

from brainstacks_pl.losses import per_sample_lm_loss
from brainstacks_pl.model import BrainstacksModel

__all__ = ["evaluate_loss"]


@torch.no_grad()
def evaluate_loss(stacks: BrainstacksModel, dataloader, device: torch.device | str = "cpu") -> float:
    """Mean response-token loss over a whole dataloader (sums in float64: order-stable, exact)."""
    was_training = stacks.training
    stacks.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    try:
        for batch in dataloader:
            out = stacks(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            sums, counts = per_sample_lm_loss(out.logits, batch["labels"].to(device))
            total += sums.double().sum().cpu()
            count += int(counts.sum())
    finally:
        stacks.train(was_training)
    if count == 0:
        raise ValueError("evaluation data has no response tokens")
    return float(total / count)
