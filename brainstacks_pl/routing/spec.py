"""The router's settings, one object from the config to ``router.json`` to serving, and its one rule.

``RouterSpec`` is what ``router.json`` records: the domains, the network's sizes, the feature
recipe (``router_seq_len``, ``mid_weight``, ``prompt_template``), the gate, the decision
threshold, the discovery settings (chat domain and floor among them) and the base it was
trained on. Its defaults are the only ones: a reader takes the values from the spec, never
from a ``dict.get(key, default)`` of its own. The file is untrusted input: ``from_json``
checks it once, at the file boundary, and a malformed or hand-edited field is a
``RouterFileError`` that names it.

``serving_weights`` is the one weighting rule, used by outcome discovery (on a route's 0/1
indicators, so a route is scored with the weights it will be served with), by inference and
the HTTP server (on the router's probabilities) and by evaluation (through inference)::

    w_d    = p_d if p_d >= gate else 0                          [..., D]
    w_chat = max(w_chat, chat_floor) if any_d w_d > 0           the chat floor

When serving, ``RouterSpec.weights`` adds the capability gap: a prompt whose novelty
(``routing/novelty.py``) is above ``gap_threshold`` gets no weight at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from brainstacks_pl.prompts import DEFAULT_PROMPT_TEMPLATE, check_resolved_template
from brainstacks_pl.storage import StackFileError

__all__ = ["DiscoverySettings", "RouterFileError", "RouterSpec", "serving_weights"]


class RouterFileError(StackFileError):
    """The router is missing, corrupt, or does not belong to this run."""


def serving_weights(
    scores: Tensor, domains: Sequence[str], *, gate: float, chat_domain: str | None, chat_floor: float
) -> Tensor:
    """Router probabilities, or a route's 0/1 indicators, ``[..., D]`` -> the weights served ``[..., D]``.

    Computed in ``scores``' dtype: float64 probabilities give exactly the Python floats a
    ``RouteDecision`` holds, float32 indicators exactly the rows discovery scores.
    """
    weights = torch.where(scores >= gate, scores, torch.zeros_like(scores))  # [..., D]
    if chat_domain in domains:
        chat = list(domains).index(chat_domain)
        on = (weights > 0).any(-1)  # [...]
        weights[..., chat] = torch.where(on, weights[..., chat].clamp(min=chat_floor), weights[..., chat])
    return weights


# ---------------------------------------------------------------------- field checks
def _number(name: str, value: Any, lo: float, hi: float, optional: bool = False) -> float | int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
    return value  # as given: an int stays one, so the json and the discovery fingerprint keep their bytes


def _integer(name: str, value: Any, lo: int, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return value


def _text(name: str, value: Any, optional: bool = False) -> str | None:
    if (value is None and optional) or (isinstance(value, str) and value):
        return value
    raise ValueError(f"{name} must be a non-empty string{' or null' if optional else ''}, got {value!r}")


def _names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def _set(spec: Any, **values: Any) -> None:
    for name, value in values.items():
        object.__setattr__(spec, name, value)


@dataclass(frozen=True)
class DiscoverySettings:
    """How routing targets are discovered (Brainstacks defaults)."""

    chat_domain: str | None = "chat"
    """Domain whose stack always runs with at least ``chat_floor`` when any domain is on (None: no floor)."""
    chat_floor: float = 0.20
    """Minimum chat weight whenever any domain is on."""
    greedy_threshold: float = 0.01
    """A domain joins the route only if it lowers the mean answer loss by more than this."""
    reasoning_domain: str | None = "reasoning"
    """Domain that gets ``soft_target`` when adding it lowers the loss at all (None: no such domain)."""
    soft_target: float = 0.5
    """Discovered target of the reasoning domain when it helps but did not join the route."""
    prior_weight: float = 0.2
    """Weight of the label prior (one-hot of the source domain) in the final target."""

    def __post_init__(self) -> None:
        _set(
            self,
            chat_domain=_text("discovery.chat_domain", self.chat_domain, optional=True),
            chat_floor=_number("discovery.chat_floor", self.chat_floor, 0.0, 1.0),
            greedy_threshold=_number("discovery.greedy_threshold", self.greedy_threshold, -math.inf, math.inf),
            reasoning_domain=_text("discovery.reasoning_domain", self.reasoning_domain, optional=True),
            soft_target=_number("discovery.soft_target", self.soft_target, 0.0, 1.0),
            prior_weight=_number("discovery.prior_weight", self.prior_weight, 0.0, 1.0),
        )


_REQUIRED = ("domains", "layer_shapes_hash", "d_model", "hidden")
"""Keys every router.json has; the others fall back to the spec's defaults."""


@dataclass(frozen=True)
class RouterSpec:
    """Everything a trained router's file says besides its weights (``router.json``, same keys)."""

    domains: tuple[str, ...] = ()
    """Router domains, one sigmoid each, in this order."""
    dropout: float = 0.1
    """Dropout of the router's fusion MLP."""
    router_seq_len: int = 256
    """Prompt tokens the router sees (the first ones)."""
    mid_weight: float = 0.45
    """Weight of the base's middle-layer hidden state in the features (the last layer gets the rest)."""
    gate_threshold: float = 0.12
    """Serving gate: a domain below it gets weight 0 (its stacks are not loaded)."""
    decision_threshold: float = 0.5
    """A domain counts as "on" for exact match and the routing report when p >= this."""
    false_gap_rate: float | None = 0.05
    """Fraction of held-out in-domain prompts the capability gap may fire on; the novelty
    threshold is calibrated to it (``routing/novelty.py``). None: no novelty detector."""
    gap_shrinkage: float = 0.01
    """Shrinkage of the novelty detector's covariance towards a scaled identity."""
    gap_threshold: float | None = None
    """Novelty above which a prompt is a capability gap (fitted; None: only the gate decides)."""
    discovery: DiscoverySettings = field(default_factory=DiscoverySettings)
    """How the targets were discovered; its chat domain and floor are also served."""
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    """The SFT prompt template the router's prompts were rendered with."""
    best: dict | None = None
    """The best epoch's score, epoch and metrics (a record of the training)."""
    train_examples: int | None = None
    val_examples: int | None = None
    base_model_id: str | None = None
    """The base the router was trained on (for messages); ``layer_shapes_hash`` is what is checked."""
    layer_shapes_hash: str | None = None
    d_model: int | None = None
    """Feature width (the base's hidden size)."""
    hidden: int = 512
    """Router width (512 in the paper)."""

    def __post_init__(self) -> None:
        domains = self.domains
        if (
            isinstance(domains, str)
            or not isinstance(domains, Sequence)
            or not all(isinstance(d, str) and d for d in domains)
        ):
            raise ValueError(f"domains must be a list of domain names, got {domains!r}")
        if len(set(domains)) != len(domains):
            raise ValueError(f"domains must not repeat a name, got {list(domains)}")
        if not isinstance(self.discovery, DiscoverySettings):
            raise ValueError(f"discovery must be discovery settings, got {self.discovery!r}")
        check_resolved_template(self.prompt_template)  # a router records the run's resolved template
        if self.best is not None and not isinstance(self.best, dict):
            raise ValueError(f"best must be an object or null, got {self.best!r}")
        _set(
            self,
            domains=tuple(domains),
            dropout=_number("dropout", self.dropout, 0.0, 1.0),
            router_seq_len=_integer("router_seq_len", self.router_seq_len, 1),
            mid_weight=_number("mid_weight", self.mid_weight, 0.0, 1.0),
            gate_threshold=_number("gate_threshold", self.gate_threshold, 0.0, 1.0),
            decision_threshold=_number("decision_threshold", self.decision_threshold, 0.0, 1.0),
            false_gap_rate=_number("false_gap_rate", self.false_gap_rate, 0.0, 0.999, optional=True),
            gap_shrinkage=_number("gap_shrinkage", self.gap_shrinkage, 0.0, 1.0),
            gap_threshold=_number("gap_threshold", self.gap_threshold, 0.0, math.inf, optional=True),
            train_examples=_integer("train_examples", self.train_examples, 0, optional=True),
            val_examples=_integer("val_examples", self.val_examples, 0, optional=True),
            base_model_id=_text("base_model_id", self.base_model_id, optional=True),
            layer_shapes_hash=_text("layer_shapes_hash", self.layer_shapes_hash, optional=True),
            d_model=_integer("d_model", self.d_model, 1, optional=True),
            hidden=_integer("hidden", self.hidden, 1),
        )

    @property
    def n_domains(self) -> int:
        return len(self.domains)

    @property
    def chat_domain(self) -> str | None:
        return self.discovery.chat_domain

    @property
    def chat_floor(self) -> float:
        return self.discovery.chat_floor

    def weights(self, probs: Tensor, novelty: Tensor | None = None) -> Tensor:
        """``serving_weights`` of router probabilities ``[..., n_domains]`` with this spec's gate and
        floor; rows whose ``novelty`` ``[...]`` is above the gap threshold are all zero."""
        weights = serving_weights(
            probs, self.domains, gate=self.gate_threshold, chat_domain=self.chat_domain, chat_floor=self.chat_floor
        )
        if novelty is None or self.gap_threshold is None:
            return weights
        return weights.masked_fill((novelty > self.gap_threshold)[..., None], 0.0)

    def with_overrides(
        self, gate_threshold: float | None = None, chat_floor: float | None = None, gap_threshold: float | None = None
    ) -> RouterSpec:
        """This spec with a serving-time gate, chat floor and/or gap threshold (None: keep the trained one).
        A gap threshold applies only to a router that has a novelty detector."""
        spec = self if gate_threshold is None else replace(self, gate_threshold=gate_threshold)
        if gap_threshold is not None and spec.gap_threshold is not None:
            spec = replace(spec, gap_threshold=gap_threshold)
        return spec if chat_floor is None else replace(spec, discovery=replace(spec.discovery, chat_floor=chat_floor))

    def to_json(self) -> dict[str, Any]:
        """The ``router.json`` object (the keys the code has always written, ``n_domains`` included)."""
        out = {name: getattr(self, name) for name in _names(RouterSpec)}
        out.update(domains=list(self.domains), discovery=asdict(self.discovery), n_domains=self.n_domains)
        return out

    @classmethod
    def from_json(cls, data: Any, where: str) -> RouterSpec:
        """The spec a ``router.json`` object describes; ``RouterFileError`` naming the field if it is malformed."""
        if not isinstance(data, dict):
            raise RouterFileError(f"{where}: router json must be an object, got {type(data).__name__}")
        names = set(_names(cls))
        unknown = sorted(set(data) - names - {"n_domains"})
        missing = [k for k in _REQUIRED if data.get(k) is None]
        if unknown:
            raise RouterFileError(f"{where}: unknown field(s) {unknown} in the router json (known: {sorted(names)})")
        if missing:
            raise RouterFileError(f"{where}: the router json lacks field(s) {missing}")
        values = {k: v for k, v in data.items() if k in names}
        try:
            discovery = values.get("discovery", {})
            if not isinstance(discovery, dict) or set(discovery) - set(_names(DiscoverySettings)):
                raise ValueError(
                    f"discovery must be an object with fields of {_names(DiscoverySettings)}, got {discovery!r}"
                )
            if not isinstance(values["domains"], list) or not values["domains"]:
                raise ValueError(f"domains must be a non-empty list of domain names, got {values['domains']!r}")
            spec = cls(**{**values, "discovery": DiscoverySettings(**discovery)})
        except (TypeError, ValueError) as err:
            raise RouterFileError(f"{where}: field {err}") from None
        if "n_domains" in data and data["n_domains"] != spec.n_domains:
            raise RouterFileError(
                f"{where}: field n_domains is {data['n_domains']!r} "
                f"but field domains lists {spec.n_domains}: {list(spec.domains)}"
            )
        return spec
