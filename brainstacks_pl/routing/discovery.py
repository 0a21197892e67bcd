"""Outcome discovery: which set of domain stacks actually lowers the loss of an answer.

The router is not trained on "this prompt came from the medical set" but on what helps:
per (prompt, answer)

1. the mean answer loss with the base only and with each single domain on;
2. starting from the best single domain, greedily add the domain that lowers the loss most,
   while it lowers it by more than ``greedy_threshold`` (0.01); if the final set does not beat
   the base by more than the threshold, the route is empty (no stack helps: base only);
3. the reasoning domain gets a soft 0.5 target when adding it to the route lowers the loss at
   all (it rarely helps by itself, but it rarely hurts);
4. target = ``(1 - prior_weight) * discovered + prior_weight * one_hot(source domain)``.

Chat floor (docs/router.md): whenever any domain is on, the chat stack runs with weight at
least ``chat_floor`` (0.20), in discovery exactly as at inference (one rule,
``routing/spec.py: serving_weights``), so a route is scored with the weights it will be served with.

Many routes are scored in ONE forward: every (example, route) pair is a row of the batch with
its own routing-weight row (``stacks.routed(weights)``, exact per sample). A forward runs only
the stacks of the domains its rows switch on (a domain with weight 0 in every row of the batch is
skipped, not multiplied by zero) and the LM head only from the first answer token on; rows are
ordered by length or grouped by route, whichever costs fewer multiply-adds (``_plan``). Results are cached
per domain in ``RUN/router/discovery/<domain>.jsonl`` (rewritten atomically after every
chunk; already-done examples are skipped on a rerun; a change of stacks or settings changes
the fingerprint and invalidates the lines).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from brainstacks_pl.losses import IGNORE_INDEX, per_sample_lm_loss
from brainstacks_pl.routing.spec import DiscoverySettings, serving_weights
from brainstacks_pl.storage import atomic_write_bytes

log = logging.getLogger(__name__)

__all__ = [
    "DiscoverySettings",
    "DiscoveryRecord",
    "DiscoveryCache",
    "RouteLossOracle",
    "route_weights",
    "greedy_discovery",
    "make_target",
    "example_key",
    "discover_examples",
]

Route = frozenset
Pair = tuple[int, frozenset]


@dataclass
class DiscoveryRecord:
    """One example's discovered outcome (a line of the cache)."""

    key: str
    domain: str
    split: str
    base_loss: float
    best_loss: float
    route: list[str]
    soft: list[str] = field(default_factory=list)
    target: list[float] = field(default_factory=list)
    evaluated: int = 0
    """Number of routes scored for this example."""


def example_key(prompt: str, response: str) -> str:
    return hashlib.sha1(f"{prompt}\x00{response}".encode()).hexdigest()[:20]


def route_weights(
    route: frozenset | set | Sequence[str],
    domains: Sequence[str],
    chat_domain: str | None = DiscoverySettings.chat_domain,
    chat_floor: float = DiscoverySettings.chat_floor,
) -> Tensor:
    """Weights [D] a route is scored with: its 0/1 indicators through ``serving_weights``, the rule
    inference serves with (1 for the route's domains, chat at least ``chat_floor`` when any is on)."""
    indicators = torch.tensor([1.0 if d in route else 0.0 for d in domains])  # [D]
    return serving_weights(
        indicators, domains, gate=0.0, chat_domain=chat_domain, chat_floor=chat_floor
    )  # 0/1: nothing to gate


def greedy_discovery(
    n: int,
    evaluate: Callable[[list[Pair]], list[float]],
    domains: Sequence[str],
    threshold: float = 0.01,
    reasoning_domain: str | None = "reasoning",
) -> list[dict]:
    """Greedy route search for ``n`` examples in lockstep.

    ``evaluate(pairs)`` scores a list of ``(example_index, route)`` pairs (one batched call per
    greedy step for all examples). Returns per example ``{base_loss, best_loss, route, soft,
    evaluated}`` with ``route`` in ``domains`` order. Ties go to the earlier domain.
    """
    memo: list[dict[frozenset, float]] = [{} for _ in range(n)]

    def score(requests: list[Pair]) -> None:
        todo = list(dict.fromkeys((i, r) for i, r in requests if r not in memo[i]))
        if todo:
            for (i, route), loss in zip(todo, evaluate(todo), strict=True):
                memo[i][route] = float(loss)

    empty = frozenset()
    score([(i, empty) for i in range(n)] + [(i, frozenset([d])) for i in range(n) for d in domains])
    current = [min((frozenset([d]) for d in domains), key=lambda r, i=i: memo[i][r]) for i in range(n)]
    active = list(range(n))
    while active:
        candidates = {i: [current[i] | {d} for d in domains if d not in current[i]] for i in active}
        score([(i, route) for i in active for route in candidates[i]])
        still = []
        for i in active:
            if not candidates[i]:
                continue
            best = min(candidates[i], key=lambda r, i=i: memo[i][r])
            if memo[i][current[i]] - memo[i][best] > threshold:
                current[i] = best
                still.append(i)
        active = still
    routes = [cur if memo[i][empty] - memo[i][cur] > threshold else empty for i, cur in enumerate(current)]
    if reasoning_domain in domains:
        score([(i, route | {reasoning_domain}) for i, route in enumerate(routes) if reasoning_domain not in route])
    results = []
    for i, route in enumerate(routes):
        soft = []
        if (
            reasoning_domain in domains
            and reasoning_domain not in route
            and memo[i][route | {reasoning_domain}] < memo[i][route]
        ):
            soft = [reasoning_domain]
        results.append(
            {
                "base_loss": memo[i][empty],
                "best_loss": memo[i][route],
                "route": [d for d in domains if d in route],
                "soft": soft,
                "evaluated": len(memo[i]),
            }
        )
    return results


def make_target(
    route: Sequence[str],
    soft: Sequence[str],
    source: str,
    domains: Sequence[str],
    soft_target: float = 0.5,
    prior_weight: float = 0.2,
) -> list[float]:
    """``(1 - prior_weight) * discovered + prior_weight * one_hot(source)`` in ``domains`` order."""
    discovered = [1.0 if d in route else soft_target if d in soft else 0.0 for d in domains]
    return [(1 - prior_weight) * v + prior_weight * (1.0 if d == source else 0.0) for v, d in zip(discovered, domains)]


class RouteLossOracle:
    """Scores (example, route) pairs: mean answer loss with the route's stacks, many routes per forward.

    Each pair becomes one row of a right-padded batch with its own routing-weight row;
    batches hold at most ``max_rows`` rows.
    """

    def __init__(
        self,
        stacks,
        pad_id: int,
        chat_domain: str | None = DiscoverySettings.chat_domain,
        chat_floor: float = DiscoverySettings.chat_floor,
        max_rows: int = 64,
        device: torch.device | str = "cpu",
    ):
        self.stacks, self.pad_id, self.max_rows, self.device = stacks, pad_id, max_rows, device
        self.chat_domain, self.chat_floor = chat_domain, chat_floor
        self.forwards = 0
        self._keeps_logits: bool | None = None

    def weights(self, route) -> Tensor:
        return route_weights(route, self.stacks.domains, self.chat_domain, self.chat_floor)

    def _answer_logits(self, labels: Tensor) -> dict:
        """``{logits_to_keep: positions}`` so the LM head runs only from the token before the first
        answer token on (where the model takes that argument): with prompts longer than answers it
        is most of the head. Positions as a tensor, not a count: Hugging Face then gathers a
        contiguous copy, where a count slices a strided view that the head's GEMM runs slower on."""
        if self._keeps_logits is None:
            self._keeps_logits = "logits_to_keep" in inspect.signature(self.stacks.model.forward).parameters
        answered = (labels != IGNORE_INDEX).any(0).nonzero()  # host tensor: no device sync
        if not self._keeps_logits or not len(answered) or int(answered[0]) < 1:
            return {}
        return {"logits_to_keep": torch.arange(int(answered[0]) - 1, labels.shape[1], device=self.device)}

    @torch.no_grad()
    def losses(self, items: Sequence[tuple[Tensor, Tensor]], pairs: Sequence[Pair]) -> list[float]:
        """``items[i] = (ids [L_i], labels [L_i])``; returns one mean answer loss per pair."""
        out = [0.0] * len(pairs)
        for rows_at in self._plan(items, pairs):
            chunk = [pairs[k] for k in rows_at]
            for k, loss in zip(rows_at, self._chunk_losses(items, chunk)):
                out[k] = loss
            self.forwards += 1
        return out

    def _plan(self, items: Sequence[tuple[Tensor, Tensor]], pairs: Sequence[Pair]) -> list[list[int]]:
        """Rows per forward (at most ``max_rows`` each), the cheapest of a few orderings.

        Sorting rows by length pads least; grouping them by route lets a forward skip the stacks
        no row of it switches on. Which wins depends on the lengths, the routes and how much a
        stack costs next to the base, so each candidate is priced in multiply-adds per padded
        token (base projections + LM head + the switched-on domains' stacks) on the host.
        """
        lengths = [len(items[i][0]) for i, _ in pairs]
        position = {d: i for i, d in enumerate(self.stacks.domains)}
        routes = [tuple(sorted(position.get(d, len(position)) for d in route)) for _, route in pairs]
        base, per_stack = self._token_costs()
        stacks_of = {d: sum(info.domain == d for info in self.stacks.frozen_stacks) for d in self.stacks.domains}
        on_cache: dict[tuple, int] = {}

        def cost(chunk: list[int]) -> float:
            key = tuple(sorted({pairs[k][1] for k in chunk}, key=sorted))
            if key not in on_cache:
                on = (torch.stack([self.weights(route) for route in key]) > 0).any(0).tolist()
                on_cache[key] = sum(stacks_of[d] for d, flag in zip(self.stacks.domains, on) if flag)
            return len(chunk) * max(lengths[k] for k in chunk) * (base + on_cache[key] * per_stack)

        plans = []
        for bucket in (1, 16, None):  # None: by route first, then length
            order = sorted(
                range(len(pairs)), key=lambda k: (lengths[k] // bucket if bucket else 0, routes[k], lengths[k])
            )
            plans.append([order[start : start + self.max_rows] for start in range(0, len(order), self.max_rows)])
        return min(plans, key=lambda plan: sum(cost(chunk) for chunk in plan))

    def _token_costs(self) -> tuple[float, float]:
        """Multiply-adds per token: the base's projections and LM head, and one frozen stack."""
        cfg = self.stacks.stack_config
        shapes = self.stacks.layer_shapes().values()
        head = self.stacks.model.get_output_embeddings()
        base = sum(i * o for i, o in shapes) + (head.weight.numel() if head is not None else 0)
        per_stack = sum((cfg.experts * (cfg.rank + 1)) * i + cfg.experts * cfg.rank * o for i, o in shapes)
        return float(base), float(per_stack)

    def _chunk_losses(self, items: Sequence[tuple[Tensor, Tensor]], chunk: Sequence[Pair]) -> list[float]:
        length = max(len(items[i][0]) for i, _ in chunk)
        ids = torch.full((len(chunk), length), self.pad_id, dtype=torch.long)  # [R, L]
        labels = torch.full((len(chunk), length), IGNORE_INDEX, dtype=torch.long)  # [R, L]
        mask = torch.zeros((len(chunk), length), dtype=torch.long)  # [R, L]
        for row, (i, _) in enumerate(chunk):
            seq_ids, seq_labels = items[i]
            ids[row, : len(seq_ids)], labels[row, : len(seq_ids)], mask[row, : len(seq_ids)] = seq_ids, seq_labels, 1
        weights = torch.stack([self.weights(route) for _, route in chunk])  # [R, D]
        switched_on = [d for d, on in zip(self.stacks.domains, (weights > 0).any(0).tolist()) if on]
        if switched_on:
            scope = self.stacks.routing("routed", domains=switched_on, weights=weights.to(self.device))
        else:
            scope = self.stacks.base_only()
        keep = self._answer_logits(labels)
        if keep:
            labels = labels[:, int(keep["logits_to_keep"][0]) :]
        with scope:
            logits = self.stacks(ids.to(self.device), mask.to(self.device), **keep).logits
        sums, counts = per_sample_lm_loss(logits, labels.to(self.device))
        return (sums / counts.clamp_min(1)).tolist()


class DiscoveryCache:
    """One domain's discovery results on disk (JSON lines), valid for one ``fingerprint``."""

    def __init__(self, path: str | Path, fingerprint: str, write: bool = True):
        self.path, self.fingerprint, self.write = Path(path), fingerprint, write
        self.records: dict[str, DiscoveryRecord] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn line cannot happen with atomic writes, but never trust a file
                if raw.pop("fingerprint", None) == fingerprint:
                    self.records[raw["key"]] = DiscoveryRecord(**raw)

    def add(self, records: Sequence[DiscoveryRecord]) -> None:
        for record in records:
            self.records[record.key] = record
        if self.write:
            lines = [json.dumps({"fingerprint": self.fingerprint, **asdict(r)}) for r in self.records.values()]
            atomic_write_bytes(self.path, ("\n".join(lines) + "\n").encode())


def discover_examples(
    oracle: RouteLossOracle,
    items: Sequence[tuple[Tensor, Tensor]],
    keys: Sequence[str],
    source: str,
    split: str,
    cache: DiscoveryCache,
    settings: DiscoverySettings,
    domains: Sequence[str] | None = None,
    chunk_size: int = 32,
    progress=None,
) -> list[DiscoveryRecord]:
    """Discover (or read from ``cache``) every example of one domain split, in input order.

    ``domains`` are the router's domains (default: the model's); routes are sets of them.
    ``progress`` (a ``brainstacks_pl.progress.Progress``) is told of every example done.
    """
    domains = list(domains or oracle.stacks.domains)
    todo = [i for i, key in enumerate(keys) if key not in cache.records]
    if len(todo) < len(keys):
        log.info("discovery %s/%s: %d of %d examples cached", source, split, len(keys) - len(todo), len(keys))
        if progress is not None:
            progress.update(len(keys) - len(todo), f"{source}/{split}: cached")
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        sub = [items[i] for i in chunk]
        found = greedy_discovery(
            len(chunk),
            lambda pairs, sub=sub: oracle.losses(sub, pairs),
            domains,
            settings.greedy_threshold,
            settings.reasoning_domain,
        )
        records = [
            DiscoveryRecord(
                key=keys[i],
                domain=source,
                split=split,
                target=make_target(r["route"], r["soft"], source, domains, settings.soft_target, settings.prior_weight),
                **r,
            )
            for i, r in zip(chunk, found)
        ]
        cache.add(records)
        if progress is not None:
            progress.update(len(chunk), f"{source}/{split}")
    return [cache.records[key] for key in keys]
