"""Router training rows, the leakage filter and the selection scores: shared by the router module and its phase."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

__all__ = ["RouterRow", "drop_val_prompts", "selection_scores"]


@dataclass
class RouterRow:
    """One router training example: a prompt, its discovered target and route."""

    prompt: str
    source: str
    target: list[float]
    route: list[str]


def drop_val_prompts(train: Sequence[RouterRow], val: Sequence[RouterRow]) -> tuple[list[RouterRow], list[RouterRow]]:
    """``(train without the rows whose prompt is also a validation prompt, val)``: no leakage.

    Not a split: the rows arrive split by the data module (``split_train_val``); this is the
    router's guard that no prompt it is selected on was also trained on.
    """
    held_out = {row.prompt for row in val}
    return [row for row in train if row.prompt not in held_out], list(val)


def selection_scores(probs: Tensor, routes: Tensor, threshold: float = 0.5) -> dict[str, float]:
    """Single-domain top-1 accuracy and mixed-set exact match.

    ``routes`` [N, D] is the oracle route (0/1). Single: rows whose route has exactly one
    domain, correct when the router's argmax is that domain. Mixed: rows with >= 2 domains,
    correct when ``{d : p_d >= threshold}`` equals the route. An empty group scores 0 (the
    same for every epoch, so it does not move the best-epoch choice).
    """
    size = routes.sum(1)
    single, mixed = size == 1, size >= 2
    top1 = (probs[single].argmax(1) == routes[single].argmax(1)).float().mean().item() if single.any() else 0.0
    exact = ((probs[mixed] >= threshold) == routes[mixed].bool()).all(1).float().mean().item() if mixed.any() else 0.0
    return {"single_top1": top1, "mixed_exact": exact, "n_single": int(single.sum()), "n_mixed": int(mixed.sum())}
