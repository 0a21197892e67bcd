"""The routing state and aux-loss sink shared by every ``StackedLinear`` of one model.

A Hugging Face model calls its linear layers with the hidden states only, so routing
weights cannot travel as a forward argument. Instead ``BrainstacksModel`` owns one
``StackContext`` and hands the same object to each ``StackedLinear`` it injects; the model's
context managers (``routed(weights)``, ``isolated(domains)``, ...) set it for the duration of
a ``with`` block and restore it afterwards. Nothing is stored on the layers themselves.

Every layer of a model holds the same frozen stacks in the same order, so which stacks a
routing scope selects, and the ``[batch, S]`` routing weights of those stacks, are worked
out once per scope here (``selection`` / ``routed_columns``) instead of once per layer.
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
    """The domain set for ``isolated`` mode; in ``routed`` mode, when not empty, only these domains'
    stacks run (the caller promises every other domain has weight 0 in every row)."""
    weights: Tensor | None = None
    """[batch, n_domains] per-sample routing weights for ``routed`` mode."""
    aux_losses: list[Tensor] | None = None
    """When a list, each layer's active stack appends its load-balance loss here."""
    expert_fractions: list[Tensor] | None = None
    """When a list, each layer's active stack appends its expert utilisation here."""
    active_enabled: bool = True
    """False switches every layer's active (trainable) stack off, whatever the mode: the RL phases'
    reference policy is the same model without it (``BrainstacksModel.active_off()``)."""
    noise_generator: torch.Generator | None = None
    """Source of the active stack's gating noise (seeded per epoch so resumed runs replay it)."""
    cache_frozen: bool = True
    """Keep the selected frozen stacks cast to the compute dtype between calls (fast; a persistent
    copy where storage and compute dtypes differ, e.g. bf16 stacks on a fp32 CPU base). False casts
    them on every call and in backward instead: no copy held, slower (``bench_model.py``)."""
    stack_selection_cache: dict = field(default_factory=dict, repr=False)
    """(mode, domains, frozen domains) -> selected stack positions; cleared when stacks change."""
    _routed_cache: tuple = field(default_factory=lambda: (None, {}), repr=False)
    """(the weights tensor these were cut from, {(domains, scale, dtype, device): [batch, S] columns})."""

    def selects(self, domain: str) -> bool:
        """Whether a stack of ``domain`` takes part in the current mode at all."""
        if self.mode == "base":
            return False
        if self.mode == "isolated" or (self.mode == "routed" and self.active_domains):
            return domain in self.active_domains
        return True

    def domain_index(self, domain: str) -> int:
        return self.domains.index(domain)

    def selection(self, frozen_domains: list[str]) -> tuple[int, ...]:
        """Positions of the frozen stacks (of the given domains, in order) the current mode runs."""
        key = (self.mode, self.active_domains, tuple(frozen_domains))
        selected = self.stack_selection_cache.get(key)
        if selected is None:
            selected = tuple(i for i, domain in enumerate(frozen_domains) if self.selects(domain))
            self.stack_selection_cache[key] = selected
        return selected

    def routed_columns(
        self, domains: tuple[str, ...], scale: float, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """[batch, len(domains)] routing weights of stacks of these domains times ``scale`` (``routed`` mode).

        Cut from ``weights`` once per scope and kept on ``device``, so a layer's forward builds
        no index tensor and copies nothing from the host.
        """
        weights = self.weights
        if weights is None:
            raise RuntimeError("routed mode needs a [batch, n_domains] weights tensor")
        source, columns = self._routed_cache
        if source is not weights or columns.get("version") != weights._version:  # a new tensor, or written in place
            source, columns = weights, {"version": weights._version}
            self._routed_cache = (source, columns)
        key = (domains, scale, dtype, device)
        picked = columns.get(key)
        if picked is None:
            index = torch.tensor([self.domain_index(d) for d in domains], device=device)
            picked = weights.to(device=device, dtype=dtype).index_select(1, index)  # [B, S]
            columns[key] = picked = picked * scale if scale != 1.0 else picked
        return picked
