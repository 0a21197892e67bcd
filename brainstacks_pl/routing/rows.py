"""Router training rows and the prompt-level split: shared by the router module and its phase."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RouterRow", "split_by_prompt"]


@dataclass
class RouterRow:
    """One router training example: a prompt, its discovered target and route."""

    prompt: str
    source: str
    target: list[float]
    route: list[str]


def split_by_prompt(train: Sequence[RouterRow], val: Sequence[RouterRow]) -> tuple[list[RouterRow], list[RouterRow]]:
    """Drop every training row whose prompt is also a validation prompt (no leakage)."""
    held_out = {row.prompt for row in val}
    return [row for row in train if row.prompt not in held_out], list(val)
