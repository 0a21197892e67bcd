"""Superposition inference: base + router resident, stacks loaded from disk only when routed to.

    p = sigmoid(router(base-only features of the prompt))         once per prompt, [D]
    w_d = p_d if p_d >= gate (0.12) else 0                           below the gate: not loaded
    w_chat = max(w_chat, chat_floor) if any w_d > 0                  chat floor 0.20
                                            (the rule and its settings: routing/spec.py)
    y = base(x) + sum_{stacks s of selected domains} w_{d(s)} * stack_s(x)

``StackCache`` keeps stack tensors in host memory under an LRU byte budget (loads verified by
checksum; a hit costs no I/O). Only the stacks of the domains a batch needs are placed into
the model's frozen buffers (``BrainstacksModel.set_frozen_stacks``), so device memory follows
the request, not the number of stack files on disk. A batch whose prompts route to different
domains is generated together: the union of their domains is loaded and each row gets its
own weight row (``stacks.routed(weights)``). When no domain reaches the gate the answer comes
from the base alone and ``RouteDecision.capability_gap`` says so; so it does when the prompt is
unlike every prompt the router was trained on (its novelty is above the router's calibrated gap
threshold, ``routing/novelty.py``): the router's probabilities are not to be trusted there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from brainstacks_pl.assets import resolve_model_name
from brainstacks_pl.config import StackConfig
from brainstacks_pl.errors import InferenceError
from brainstacks_pl.fingerprint import check_base_model, is_local
from brainstacks_pl.generation import generate, pad_left
from brainstacks_pl.layers.router import MetaRouter, base_features
from brainstacks_pl.model import BrainstacksModel
from brainstacks_pl.prompts import base_template, keep_prompt_end, prompt_ids
from brainstacks_pl.routing.artifact import load_router
from brainstacks_pl.routing.features import pad_right
from brainstacks_pl.routing.novelty import NoveltyDetector, pooled_features
from brainstacks_pl.routing.spec import RouterSpec
from brainstacks_pl.stack_cache import StackCache
from brainstacks_pl.storage import MANIFEST_NAME, Manifest
from brainstacks_pl.tokenization import pad_token_id

__all__ = ["InferenceError", "check_device", "StackCache", "RouteDecision", "Generation", "RoutedGenerator", "Mode"]

Mode = Literal["routed", "ungated", "base"]
MODES = ("routed", "ungated", "base")
DTYPES = ("float32", "bfloat16", "float16")


def check_device(device: torch.device | str) -> torch.device:
    """``device`` as a ``torch.device`` if this machine has it; an ``InferenceError`` naming it otherwise."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InferenceError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, mps)") from err
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, True):
        raise InferenceError(f"--device {device}: this machine has no {device.type} device; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InferenceError(f"--device {device}: this machine has {torch.cuda.device_count()} cuda device(s)")
    return device


@dataclass
class RouteDecision:
    """The router's verdict for one prompt."""

    probs: dict[str, float]
    """Router probability per router domain (independent sigmoids)."""
    weights: dict[str, float]
    """Weights served per domain after the gate and the chat floor (0: not loaded)."""
    selected: list[str]
    """Domains whose stacks run for this prompt."""
    capability_gap: bool
    """No domain reached the gate, or the prompt is unlike the router's training prompts (novelty
    above the gap threshold): the base answers alone; the stacks lack this capability."""
    novelty: float | None = None
    """Distance of the prompt's features to the nearest domain's (None: the router has no detector)."""


@dataclass
class Generation:
    prompt: str
    text: str
    mode: str
    route: RouteDecision | None = None
    tokens: list[int] = field(default_factory=list)


class RoutedGenerator:
    """Generates with the stacks the router selects, per prompt, in one batch.

    Build it with ``RoutedGenerator.from_run(RUN)``; ``route(prompts)`` shows the decisions
    without generating, ``generate(prompts, mode=...)`` answers.
    """

    def __init__(
        self,
        stacks: BrainstacksModel,
        tokenizer,
        manifest: Manifest,
        run_root: str | Path,
        router: MetaRouter | None = None,
        spec: RouterSpec | None = None,
        cache: StackCache | None = None,
        gate_threshold: float | None = None,
        chat_floor: float | None = None,
        device: torch.device | str = "cpu",
        novelty: NoveltyDetector | None = None,
        gap_threshold: float | None = None,
    ):
        self.stacks, self.tokenizer, self.manifest, self.device = (
            stacks.eval(),
            tokenizer,
            manifest,
            torch.device(device),
        )
        self.router = router.to(self.device).eval() if router is not None else None
        self.novelty = novelty
        # The router's settings (the spec's defaults without a router); the arguments override its gate and floor.
        self.spec = (spec or RouterSpec()).with_overrides(gate_threshold, chat_floor, gap_threshold)
        self.cache = cache or StackCache(run_root, manifest)
        self.context_length = int(getattr(stacks.model.config, "max_position_embeddings", 0) or 0) or None
        self.loaded: tuple[str, ...] = tuple(dict.fromkeys(info.domain for info in stacks.frozen_stacks))

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        device: torch.device | str = "cpu",
        model_name_or_path: str | None = None,
        dtype: str = "float32",
        quantization: str | None = None,
        cache_bytes: int | None = None,
        require_router: bool = False,
        accept_new_base: bool = False,
        gap_threshold: float | None = None,
    ) -> RoutedGenerator:
        """Base + router of a run directory; no stack is loaded until a request needs it.

        ``accept_new_base``: serve on a base whose fingerprint differs from the run's (a deliberate move).
        ``gap_threshold``: novelty above which a prompt is a capability gap, instead of the router's
        calibrated one (``math.inf``: never by novelty).
        """
        from transformers import AutoTokenizer

        root = Path(run_dir)
        device = check_device(device)
        if not isinstance(getattr(torch, str(dtype), None), torch.dtype) or not getattr(torch, dtype).is_floating_point:
            raise InferenceError(
                f"--dtype must be a floating-point torch dtype such as {', '.join(DTYPES)}, got {dtype!r}"
            )
        manifest = Manifest.load(root)
        base = model_name_or_path or manifest.base_model_id
        # The base must be the one the stacks were trained on: checked before loading a local base,
        # after loading (downloading) a hub id that is not cached yet.
        where, local = str(root / MANIFEST_NAME), is_local(base)
        if local:
            manifest.base_model = check_base_model(manifest.base_model, base, where, accept_new_base)
        config = StackConfig.from_dict(manifest.stack_config)
        stacks = BrainstacksModel.from_pretrained(
            base, config, manifest.domains, quantization=quantization, dtype=dtype
        ).to(device)
        if not local:
            manifest.base_model = check_base_model(manifest.base_model, base, where, accept_new_base)
        manifest.check_compatible(
            stacks.layer_shapes(), config.to_dict(), manifest.domains, where=str(root / MANIFEST_NAME)
        )
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_name(base))
        router, spec, novelty = (None, None, None)
        if require_router or manifest.extra.get("router"):
            router, spec, novelty = load_router(root, manifest)
        cache = StackCache(root, manifest, cache_bytes)
        return cls(
            stacks,
            tokenizer,
            manifest,
            root,
            router,
            spec,
            cache,
            device=device,
            novelty=novelty,
            gap_threshold=gap_threshold,
        )

    @property
    def router_domains(self) -> list[str]:
        return list(self.spec.domains)

    @property
    def gate_threshold(self) -> float:
        return self.spec.gate_threshold

    @property
    def chat_floor(self) -> float:
        return self.spec.chat_floor

    @property
    def chat_domain(self) -> str | None:
        return self.spec.chat_domain

    @property
    def template(self) -> str:
        """The template the run's stacks were trained with (recorded in the manifest)."""
        return self.manifest.prompt_template

    @property
    def base_template(self) -> str:
        """The template of a prompt the base answers alone (``:base``, the capability gap)."""
        return base_template(self.tokenizer, self.template)

    def template_for(self, decision: RouteDecision | None, mode: Mode) -> str:
        """``base_template`` in base mode and for a routed prompt that got no stack, else ``template``."""
        if mode == "base" or (decision is not None and decision.capability_gap):
            return self.base_template
        return self.template

    # ------------------------------------------------------------------ prompts
    def encode(self, prompt: str, template: str | None = None) -> list[int]:
        """``prompt`` as model input ids in ``template`` (default: the run's)."""
        if not prompt or not prompt.strip():
            raise InferenceError("empty prompt: give the model something to answer")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as err:  # bytes that were not UTF-8, kept as surrogates by the terminal reader
            raise InferenceError(
                "the prompt is not valid UTF-8 text (undecodable byte at "
                f"character {err.start}); check the terminal's encoding"
            ) from None
        ids = prompt_ids(self.tokenizer, prompt, template or self.template)
        if self.context_length is not None and len(ids) >= self.context_length:
            raise InferenceError(
                f"prompt is {len(ids)} tokens with the template, the "
                f"model's context is {self.context_length}: shorten it"
            )
        return ids

    # ------------------------------------------------------------------ routing
    def route(self, prompts: Sequence[str]) -> list[RouteDecision]:
        """Run the router once per prompt (one batch) and apply the gate and the chat floor."""
        if self.router is None:
            raise InferenceError(
                "this run has no trained router: use --mode ungated or base, or train one (configs/router_demo.yaml)"
            )
        return self.route_ids([self.encode(p) for p in prompts])

    @torch.no_grad()
    def route_ids(self, encoded: Sequence[Sequence[int]]) -> list[RouteDecision]:
        """``route`` on prompts already encoded as ``[bos] + format_prompt(prompt)`` ids."""
        seq_len = self.spec.router_seq_len
        ids, mask = pad_right([keep_prompt_end(e, seq_len, self.tokenizer) for e in encoded], self._pad_id)
        feats = base_features(self.stacks, ids.to(self.device), mask.to(self.device), self.spec.mid_weight)
        probs = self.router.probabilities(feats, mask.to(self.device)).cpu()  # [B, D]
        novelty = None
        if self.novelty is not None:
            novelty = self.novelty.score(pooled_features(feats.cpu(), mask))  # [B], float64 on the CPU (not on MPS)
        return self._decisions(probs.double(), novelty)

    def decide(self, probs: dict[str, float]) -> RouteDecision:
        """Gate + chat floor on one prompt's router probabilities (one per router domain)."""
        return self._decisions(torch.tensor([[probs[d] for d in self.router_domains]], dtype=torch.float64))[0]

    def _decisions(self, probs: Tensor, novelty: Tensor | None = None) -> list[RouteDecision]:
        """One decision per row of ``probs`` [B, D] (float64: a weight is its probability's exact float);
        a row whose ``novelty`` [B] is above the gap threshold gets no stack."""
        domains, decisions = self.router_domains, []
        scores = novelty.tolist() if novelty is not None else [None] * len(probs)
        for p, w, score in zip(probs.tolist(), self.spec.weights(probs, novelty).tolist(), scores):
            selected = [d for d, weight in zip(domains, w) if weight > 0]
            decisions.append(RouteDecision(dict(zip(domains, p)), dict(zip(domains, w)), selected, not selected, score))
        return decisions

    def load_domains(self, domains: Sequence[str]) -> None:
        """Make exactly these domains' stacks resident in the model (no-op if they already are)."""
        wanted = tuple(d for d in self.stacks.domains if d in set(domains))
        if wanted == self.loaded:
            return
        self.stacks.set_frozen_stacks([stack for d in wanted for stack in self.cache.domain_stacks(d)])
        self.loaded = wanted

    def weight_matrix(self, decisions: Sequence[RouteDecision]) -> Tensor:
        """[B, n_model_domains] routing weights (zeros for domains the router does not know)."""
        rows = [[decision.weights.get(d, 0.0) for d in self.stacks.domains] for decision in decisions]
        return torch.tensor(rows, dtype=torch.float32, device=self.device)

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        prompts: Sequence[str] | str,
        mode: Mode = "routed",
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> list[Generation]:
        """Answer a batch of prompts; ``temperature`` 0 is greedy, > 0 samples from softmax(logits / T)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if mode not in MODES:
            raise InferenceError(f"mode must be one of {MODES}, got {mode!r}")
        if not prompts:
            raise InferenceError("no prompts given")
        if max_new_tokens < 1 or temperature < 0:
            raise InferenceError(f"need max_new_tokens >= 1 and temperature >= 0, got {max_new_tokens}, {temperature}")
        decisions: list[RouteDecision | None] = [None] * len(prompts)
        if mode == "routed":
            decisions = self.route(prompts)
            self.load_domains({d for decision in decisions for d in decision.selected})
            scope = self.stacks.routed(self.weight_matrix(decisions))
        elif mode == "ungated":
            self.load_domains({r.domain for r in self.manifest.stacks})
            scope = self.stacks.ungated()
        else:
            scope = self.stacks.base_only()
        encoded = [self.encode(p, self.template_for(d, mode)) for p, d in zip(prompts, decisions)]
        with scope:
            tokens = self.decode_batch(encoded, max_new_tokens, temperature, seed)
        return [
            Generation(p, self.tokenizer.decode(t, skip_special_tokens=True), mode, d, t)
            for p, t, d in zip(prompts, tokens, decisions)
        ]

    @property
    def _pad_id(self) -> int:
        return pad_token_id(self.tokenizer)

    @torch.no_grad()
    def decode_batch(
        self, encoded: list[list[int]], max_new_tokens: int, temperature: float, seed: int
    ) -> list[list[int]]:
        """Left-padded batch through ``generation.generate`` (KV cache); each row's tokens up to,
        not including, its eos, and never past the model's context."""
        ids, mask = pad_left(encoded, self._pad_id)
        generator = torch.Generator(device=self.device).manual_seed(seed) if temperature > 0 else None
        out = generate(
            self.stacks.model,
            ids.to(self.device),
            mask.to(self.device),
            max_new_tokens,
            temperature if temperature > 0 else None,
            generator,
            self.tokenizer.eos_token_id,
            self._pad_id,
            max_length=self.context_length,
        )
        completions = out.sequences[:, ids.shape[1] :].tolist()
        eos = self.tokenizer.eos_token_id
        return [
            [t for t, m in zip(row, keep) if m and t != eos]
            for row, keep in zip(completions, out.completion_mask.tolist())
        ]
