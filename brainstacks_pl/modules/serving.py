"""The configuration an alignment phase trains and measures in: the one the stack is served in.

``generate`` serves a run routed (each prompt's stacks weighted by the trained router, after
the gate and the chat floor) or, without a router, a domain's prompts see the stacks that were
on when the domain froze (its own and the earlier domains'). DPO and GRPO train the new stack
of a domain inside that same configuration, and their before/after numbers are the served
model's; training the ungated model (every stack on, later domains' included) optimised a
model nobody serves (issue 17: GRPO on math moved no served metric).

``serve`` (a config key of ``AlignmentModule``):

- ``auto`` (default): ``routed`` when the run has a trained router, else ``as_frozen``;
- ``routed``: per-prompt router weights (the trained router is required); the new stack
  counts as its domain's, so it is scaled by that domain's routing weight, as at inference;
- ``as_frozen``: the domain's and the earlier domains' stacks, weight 1;
- ``ungated``: every stack, weight 1 (the behaviour before issue 17).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = ["SERVE_MODES", "ServedConfiguration", "prompt_rows"]

ServeMode = Literal["auto", "routed", "as_frozen", "ungated"]
SERVE_MODES = ("auto", "routed", "as_frozen", "ungated")


def prompt_rows(input_ids: Tensor, keep: Tensor) -> list[list[int]]:
    """Each row's prompt token ids: the positions where ``keep`` [B, L] is true, in order."""
    return [row[mask].tolist() for row, mask in zip(input_ids.cpu(), keep.bool().cpu())]


class ServedConfiguration:
    """Scopes the model's routing as served (see the module docstring)."""

    def __init__(self, stacks, domain: str, mode: str, generator=None):
        if mode not in ("routed", "as_frozen", "ungated"):
            raise ValueError(f"serve must be one of {SERVE_MODES}, got {mode!r}")
        self.stacks, self.domain, self.mode, self.generator = stacks, domain, mode, generator
        self._cache: dict[tuple[int, ...], list[float]] = {}

    @classmethod
    def for_run(cls, stacks, tokenizer, manifest, run_root, domain: str, serve: str = "auto") -> ServedConfiguration:
        """The configuration for ``domain`` of the run in ``run_root`` (loads its router if used)."""
        if serve not in SERVE_MODES:
            raise ValueError(f"serve must be one of {SERVE_MODES}, got {serve!r}")
        has_router = bool(manifest.extra.get("router"))
        mode = ("routed" if has_router else "as_frozen") if serve == "auto" else serve
        if mode != "routed":
            return cls(stacks, domain, mode)
        from brainstacks_pl.inference import RoutedGenerator
        from brainstacks_pl.routing.artifact import load_router

        if not has_router:
            raise ValueError(
                f"serve: routed needs a trained router in {run_root}; train "
                "one (configs/router_demo.yaml) or set serve: as_frozen"
            )
        router, spec, novelty = load_router(run_root, manifest)
        was_training = stacks.training
        generator = RoutedGenerator(stacks, tokenizer, manifest, run_root, router, spec, novelty=novelty)
        stacks.train(was_training)  # RoutedGenerator puts the model in eval mode; the phase decides
        if domain not in generator.router_domains:
            raise ValueError(
                f"serve: routed, but the router does not know domain {domain!r} "
                f"(its domains: {generator.router_domains}); set serve: as_frozen"
            )
        return cls(stacks, domain, mode, generator)

    def describe(self) -> str:
        if self.mode == "routed":
            return "routed by the trained router"
        if self.mode == "as_frozen":
            order = self.stacks.domains
            return f"as frozen: stacks of {', '.join(order[: order.index(self.domain) + 1])}"
        return "ungated: every stack"

    @torch.no_grad()
    def weights(self, prompts: Sequence[Sequence[int]]) -> Tensor:
        """[B, n_domains] served routing weights of each prompt (cached: the router is frozen)."""
        gen = self.generator
        todo = list(dict.fromkeys(tuple(p) for p in prompts if tuple(p) not in self._cache))
        if todo:
            device = next(self.stacks.parameters()).device
            gen.device, gen.router = device, gen.router.to(device)
            for key, decision in zip(todo, gen.route_ids(todo)):
                self._cache[key] = [decision.weights.get(d, 0.0) for d in self.stacks.domains]
        return torch.tensor([self._cache[tuple(p)] for p in prompts], dtype=torch.float32)

    def scope(self, prompts: Sequence[Sequence[int]] | None = None, repeat: int = 1, tile: int = 1):
        """The routing scope for a batch whose rows are ``prompts`` (each repeated ``repeat``
        times in a row, the whole list ``tile`` times: DPO's chosen + rejected halves)."""
        if self.mode == "ungated":
            return self.stacks.ungated()
        if self.mode == "as_frozen":
            order = self.stacks.domains
            return self.stacks.isolated(order[: order.index(self.domain) + 1])
        weights = self.weights(prompts).repeat_interleave(repeat, 0).repeat(tile, 1)
        return self.stacks.routed(weights.to(next(self.stacks.parameters()).device))
