"""The routing state and aux-loss sink shared by every ``StackedLinear`` of one model.

A Hugging Face model calls its linear layers with the hidden states only, so routing
weights cannot travel as a forward argument. Instead ``BrainstacksModel`` owns one
``StackContext`` and hands the same object to each ``StackedLinear`` it injects; the model's
context managers (``routed(weights)``, ``isolated(domains)``, ...) set it for the duration of
a ``with`` block and restore it afterwards. Nothing is stored on the layers themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

RoutingMode = Literal["ungated", "isolated", "routed", "base"]


@dataclass
class StackContext:
    domains: list[str]
    """Domain names in curriculum order; column d of routed weights belongs to ``domains[d]``."""
    mode: RoutingMode = "ungated"
    """ungated: every stack with weight 1; isolated: only stacks of ``active_domains``;
    routed: stack of domain d scaled by ``weights[:, d]`` per sample; base: no stack at all."""
    active_domains: frozenset[str] = frozenset()
    """The domain set for ``isolated`` mode."""
    weights: Tensor | None = None
    """[batch, n_domains] per-sample routing weights for ``routed`` mode."""
    aux_losses: list[Tensor] | None = None
    """When a list, each layer's active stack appends its load-balance loss here."""
    expert_fractions: list[Tensor] | None = None
    """When a list, each layer's active stack appends its expert utilisation here."""
    active_enabled: bool = True
    """False switches every layer's active (trainable) stack off, whatever the mode: the RL phases'
    reference policy is the same model without it (``BrainstacksModel.active_off()``)."""
    noise_generator: "torch.Generator | None" = None
    """Source of the active stack's gating noise (seeded per epoch so resumed runs replay it)."""
    stack_selection_cache: dict = field(default_factory=dict, repr=False)

    def selects(self, domain: str) -> bool:
        """Whether a stack of ``domain`` takes part in the current mode at all."""
        if self.mode == "base":
            return False
        if self.mode == "isolated":
            return domain in self.active_domains
        return True

    def domain_index(self, domain: str) -> int:
        return self.domains.index(domain)
