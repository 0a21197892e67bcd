"""GRPO's reward terms: the config-time spec and import of each reward function, and the
per-batch scoring that checks their contract (a ``list[float]`` of the right length).

Kept apart from ``grpo.py`` because the reward contract and its failure modes
(``on_reward_error``, non-finite values, ranks agreeing on a skip) are one idea that the
optimisation loop only consumes: it sees a weighted reward per completion or None.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["RewardError", "RewardScoring", "RewardSpec", "load_reward"]


class RewardError(RuntimeError):
    """A reward function raised or broke the ``list[float]`` of the right length contract."""


@dataclass
class RewardSpec:
    """One reward term of GRPO."""

    function: str
    """Import path of ``reward(prompts, completions, **columns) -> list[float]``, e.g.
    ``brainstacks_pl.rewards.math_exact_match``."""
    weight: float = 1.0
    """Weight of this term in the summed reward."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments bound to the function (e.g. ``{timeout: 2.0}``)."""


def load_reward(spec: RewardSpec) -> Callable[..., list[float]]:
    """Import ``spec.function`` (``package.module.name``), run its ``check(**kwargs)`` if it has
    one (``rewards.code_tests_reward``: is the sandbox usable here?) and bind ``spec.kwargs``."""
    module_name, _, attr = spec.function.rpartition(".")
    if not module_name:
        raise ValueError(f"reward function must be an import path like 'package.module.name', got {spec.function!r}")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import reward function {spec.function!r}: {err}") from err
    if not callable(function):
        raise ValueError(f"reward {spec.function!r} is not callable")
    check = getattr(function, "check", None)
    if callable(check):  # e.g. a code reward whose sandbox cannot run here refuses now, not mid-training
        check(**spec.kwargs)
    return functools.partial(function, **spec.kwargs) if spec.kwargs else function


class RewardScoring:
    """Scoring of completions for ``GRPOModule``: needs ``reward_specs``, ``reward_functions``
    and ``on_reward_error`` on the module, and Lightning's ``log`` and ``trainer``."""

    reward_specs: list[RewardSpec]
    reward_functions: list[Callable[..., list[float]]]
    on_reward_error: str

    def reward_terms(self, prompts: list[str], completions: list[str], columns: dict[str, list]) -> list[Tensor] | None:
        """Each reward term's values [B] (float64, unweighted), checked: a raising function is a
        ``RewardError`` naming it (None with ``on_reward_error: skip``), a wrong length or a
        non-number always is. Non-finite values pass through as they are (the caller drops them)."""
        terms = []
        for spec, function in zip(self.reward_specs, self.reward_functions):
            try:
                values = list(function(prompts, completions, **columns))
            except Exception as err:
                if self.on_reward_error == "raise":
                    raise RewardError(f"reward {spec.function} raised {type(err).__name__}: {err}") from err
                log.warning("reward %s raised %r; batch skipped", spec.function, err)
                return None
            if len(values) != len(completions):
                raise RewardError(
                    f"reward {spec.function} returned {len(values)} values for {len(completions)} completions"
                )
            try:
                terms.append(torch.tensor([float(v) for v in values], dtype=torch.float64))
            except (TypeError, ValueError) as err:
                raise RewardError(f"reward {spec.function} returned a value that is not a number: {err}") from err
        return terms

    def score(self, prompts: list[str], completions: list[str], columns: dict[str, list], stage: str) -> Tensor | None:
        """Weighted reward per completion [B] (float64; NaN where a term was non-finite), or
        None when a reward raised and ``on_reward_error`` is ``skip``. Logs each term's mean."""
        terms = self.reward_terms(prompts, completions, columns)
        if terms is None:
            return None
        total = torch.zeros(len(completions), dtype=torch.float64)
        for spec, term in zip(self.reward_specs, terms):
            finite = torch.isfinite(term)
            if bool(finite.any()) and self._trainer is not None:
                self.log(
                    f"{stage}/reward/{spec.function.rpartition('.')[2]}",
                    term[finite].mean().float(),
                    on_step=stage == "train",
                    on_epoch=stage != "train",
                    batch_size=len(completions),
                )
            total = total + spec.weight * term
        return total

    def _score_on_every_rank(
        self, prompts: list[str], completions: list[str], columns: dict[str, list], stage: str = "train"
    ) -> Tensor | None:
        """``score`` with the outcome agreed across ranks (each scores its own shard): a reward
        error or a skipped batch on one rank is one on all, so no rank is left waiting in the
        next all-reduce."""
        error = None
        try:
            rewards = self.score(prompts, completions, columns, stage)
        except RewardError as err:
            rewards, error = None, err
        strategy = self.trainer.strategy
        if strategy.reduce_boolean_decision(error is not None, all=False):
            raise error or RewardError("a reward function raised on another rank; see its log")
        if strategy.reduce_boolean_decision(rewards is None, all=False):
            return None
        return rewards
