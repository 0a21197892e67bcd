"""What flows between the HTTP side and the engine: a request's route, sampling and state, and its events.

A ``Job`` is submitted by the HTTP side and then owned by the engine thread, which reports back
through ``Job.emit``: ``("route", RouteInfo)`` once, ``("token", id)`` per generated token, and one
final ``("end", reason)`` with reason ``stop`` (eos), ``length``, ``cancelled``, ``timeout``,
``shutdown`` or ``error: <message>``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Route", "Sampling", "Job", "RouteInfo", "QueueFull", "ShuttingDown", "next_token"]


class QueueFull(RuntimeError):
    """The waiting queue is at its bound: the request is refused (HTTP 429)."""


class ShuttingDown(RuntimeError):
    """The engine is draining for shutdown and takes no new request (HTTP 503)."""


@dataclass(frozen=True)
class Route:
    """What a request asked for: ``routed`` (the router decides), ``pinned`` (these domains at
    weight 1), ``ungated`` (every domain at weight 1) or ``base`` (no stack)."""

    mode: str
    domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0
    """0: greedy; > 0: a draw from softmax(logits / T) (top-p filtered when ``top_p`` < 1)."""
    top_p: float = 1.0
    seed: int | None = None
    """Seeds the request's own generator, so its samples do not depend on its batch neighbours."""


@dataclass
class RouteInfo:
    """Which stacks answer a request and with what weight (the response's ``brainstacks`` field)."""

    mode: str
    weights: dict[str, float]
    """Weight per domain whose stacks run for this request (0-weight domains left out)."""
    rounds: dict[str, list[int]]
    """Boosting rounds (stack files) of each of those domains."""
    probs: dict[str, float] | None = None
    """Router probabilities (routed mode only)."""
    capability_gap: bool = False
    """Routed, and no domain passed the gate or the prompt was novel: the base answered alone."""
    novelty: float | None = None
    """The prompt's novelty (routed mode, a router with a capability-gap detector)."""

    def to_dict(self) -> dict:
        stacks = [
            {"domain": d, "weight": round(w, 6), "rounds": self.rounds.get(d, [])} for d, w in self.weights.items()
        ]
        out = {"mode": self.mode, "stacks": stacks, "capability_gap": self.capability_gap}
        if self.probs is not None:
            out["router_probs"] = {d: round(p, 6) for d, p in self.probs.items()}
        if self.novelty is not None:
            out["novelty"] = round(self.novelty, 6)
        return out


_ids = itertools.count()


@dataclass(eq=False)
class Job:
    prompt: str
    ids: list[int]
    route: Route
    sampling: Sampling
    emit: Callable[[tuple[str, object]], None]
    """Thread-safe event sink; called from the engine thread."""
    timeout: float | None = None
    """Seconds from submission until the request ends with ``timeout``."""
    id: int = field(default_factory=lambda: next(_ids))
    # engine state
    deadline: float = float("inf")
    info: RouteInfo | None = None
    tokens: list[int] = field(default_factory=list)
    limit: int = 0
    rng: torch.Generator | None = None
    cancelled: bool = False
    finished: bool = False

    @property
    def domains(self) -> set[str]:
        return {d for d, w in self.info.weights.items() if w > 0} if self.info else set()


def next_token(logits: Tensor, sampling: Sampling, rng: torch.Generator | None) -> int:
    """[V] float logits -> one token id (greedy, or a seeded draw; top-p keeps the smallest set of
    tokens whose probability reaches ``top_p``)."""
    if sampling.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits[None] / sampling.temperature, -1)  # [1, V], as generation.generate draws
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= sampling.top_p  # [1, V] mass before it already reaches p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    return int(torch.multinomial(probs, 1, generator=rng))
