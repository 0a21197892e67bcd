"""``StackScorer``: a run's model in one evaluation mode, scoring and generating in batches.

    base     every stack off (the frozen base alone)
    ungated  every stack of the run on at weight 1 (``domains=``: only those domains' stacks)
    routed   per request, the router's weights on the request's prompt (gate + chat floor),
             exactly as ``brainstacks generate --mode routed`` serves it

One ``RoutedGenerator`` (base + router + stack cache) is shared by every mode, so scoring the
three modes loads the base once. In routed mode each distinct routing text is routed once;
the union of the selected domains is made resident and every batch row gets its own weight
row, so a batch may mix prompts that route to different domains.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from brainstacks_pl.evaluation.scoring import ContinuationScore, cut_at_stop, score_continuations
from brainstacks_pl.inference import MODES, InferenceError, RouteDecision, RoutedGenerator
from brainstacks_pl.prompts import prompt_ids
from brainstacks_pl.tokenization import pad_token_id

log = logging.getLogger(__name__)

__all__ = ["StackScorer", "ScoreRequest", "NoRouterError"]


class NoRouterError(InferenceError):
    """Routed mode asked of a run that has no trained router."""


@dataclass(frozen=True)
class ScoreRequest:
    context_ids: list[int]
    continuation_ids: list[int]
    route_text: str
    """The prompt the router sees (wrapped in the SFT template by the router's own encoding)."""


class StackScorer:
    """Log-likelihoods and greedy generations of a run's model in ``mode``."""

    def __init__(
        self,
        generator: RoutedGenerator,
        mode: str = "ungated",
        batch_size: int = 16,
        domains: Sequence[str] | None = None,
    ):
        if mode not in MODES:
            raise InferenceError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "routed" and generator.router is None:
            raise NoRouterError(
                f"{generator.cache.root}: this run has no trained router; "
                "routed mode needs one (configs/router_demo.yaml)"
            )
        if domains is not None and mode != "ungated":
            raise InferenceError(f"domains= restricts the ungated mode only, not {mode!r}")
        unknown = sorted(set(domains or ()) - set(generator.stacks.domains))
        if unknown:
            raise InferenceError(f"unknown domains {unknown}; the run has {generator.stacks.domains}")
        self.generator, self.mode, self.batch_size = generator, mode, batch_size
        self.domains = None if domains is None else tuple(domains)
        """Ungated over only these domains' stacks (a domain isolated, or the stacks on at a freeze)."""
        self._routes: dict[str, RouteDecision] = {}

    @classmethod
    def from_run(cls, run_dir, mode: str = "ungated", batch_size: int = 16, **kwargs) -> StackScorer:
        """Load the run's base (and router if present); ``kwargs`` go to ``RoutedGenerator.from_run``."""
        return cls(RoutedGenerator.from_run(run_dir, **kwargs), mode, batch_size)

    def with_mode(self, mode: str) -> StackScorer:
        """The same loaded model in another mode (routing decisions are shared)."""
        other = StackScorer(self.generator, mode, self.batch_size, self.domains if mode == "ungated" else None)
        other._routes = self._routes
        return other

    # ------------------------------------------------------------------ plumbing
    @property
    def tokenizer(self):
        return self.generator.tokenizer

    @property
    def device(self) -> torch.device:
        return self.generator.device

    @property
    def pad_id(self) -> int:
        return pad_token_id(self.tokenizer)

    @property
    def max_length(self) -> int | None:
        return self.generator.context_length

    def decisions(self, route_texts: Sequence[str]) -> list[RouteDecision]:
        """Router decisions, one per text, computed once per distinct text (batched)."""
        todo = list(dict.fromkeys(t for t in route_texts if t not in self._routes))
        gen = self.generator
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            self._routes.update(zip(chunk, gen.route_ids([prompt_ids(self.tokenizer, t, gen.template) for t in chunk])))
        return [self._routes[t] for t in route_texts]

    def templates(self, route_texts: Sequence[str]) -> list[str]:
        """The prompt template of each request in this mode (``RoutedGenerator.template_for``): the
        base's own template in base mode and for a routed prompt the capability gap sends to the base."""
        gen = self.generator
        if self.mode != "routed":
            return [gen.template_for(None, self.mode)] * len(route_texts)
        return [gen.template_for(decision, self.mode) for decision in self.decisions(route_texts)]

    def _prepare(self, route_texts: Sequence[str]) -> Tensor | None:
        """Make the mode's stacks resident; routed: the ``[N, n_domains]`` weight rows."""
        gen = self.generator
        if self.mode == "ungated":
            gen.load_domains(self.domains if self.domains is not None else {r.domain for r in gen.manifest.stacks})
        elif self.mode == "routed":
            decisions = self.decisions(route_texts)
            gen.load_domains({d for dec in decisions for d in dec.selected})
            return gen.weight_matrix(decisions)
        return None

    def _scope(self, weights: Tensor | None):
        """The routing scope of this mode; routed: one weight row per batch row."""
        stacks = self.generator.stacks
        if self.mode == "base":
            return stacks.base_only()
        if self.mode == "ungated":
            return stacks.ungated()
        return stacks.routed(weights)  # [b, n_domains]

    def _logits_fn(self, weights: Tensor | None):
        """``logits_fn(ids, mask, rows)`` under this mode; routed: rows ``weights[rows]``."""
        stacks = self.generator.stacks

        def logits(ids: Tensor, mask: Tensor, rows: list[int]) -> Tensor:
            with self._scope(weights[rows] if weights is not None else None):
                return stacks(ids, mask).logits

        return logits

    # ------------------------------------------------------------------ public
    def loglikelihood(self, requests: Sequence[ScoreRequest]) -> list[ContinuationScore]:
        """Score every request (see ``score_continuations``); routed rows carry their own weights."""
        if not requests:
            return []
        weights = self._prepare([r.route_text for r in requests])
        pairs = [(r.context_ids, r.continuation_ids) for r in requests]
        return score_continuations(
            self._logits_fn(weights), pairs, self.batch_size, self.pad_id, self.max_length, self.device
        )

    def generate(
        self, prompts: Sequence[list[int]], route_texts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = ()
    ) -> list[str]:
        """Greedy generation per prompt (token ids), cut at EOS or the first ``stop`` string.

        Decoded with the KV cache of ``RoutedGenerator.decode_batch``; a prompt longer than the
        model's context keeps its last tokens, leaving room for ``max_new_tokens``.
        """
        weights = self._prepare(route_texts) if prompts else None
        context = self.generator.context_length
        keep = max(context - max_new_tokens, 1) if context else None
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = [list(p)[-keep:] if keep else list(p) for p in prompts[start : start + self.batch_size]]
            with self._scope(weights[start : start + self.batch_size] if weights is not None else None):
                tokens = self.generator.decode_batch(chunk, max_new_tokens, 0.0, 0)
            out += [cut_at_stop(self._decode(row), stop) for row in tokens]
        return out

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)
