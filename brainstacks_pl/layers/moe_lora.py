r"""MoE-LoRA: a mixture of LoRA experts with a noisy top-k router (Brainstacks, arXiv 2604.01152).

For an input token ``x`` (``d_in``) and ``E`` experts of rank ``r``:

    logits = W_r x + softplus(W_n x) * eps          (eps ~ N(0, 1), training only)
    g      = softmax(topk(logits, k))                (zero outside the kept k)
    delta  = sum_e g_e * s * B_e A_e x               (s = alpha / sqrt(r) with rsLoRA)
    L_aux  = E * sum_e mean_tokens(p_e) * frac_e     (p = softmax(logits); frac detached)

``B`` starts at zero, so a new stack is an exact no-op until it trains. ``A`` is
Kaiming-uniform like LoRA, ``W_r`` ~ N(0, 0.02) and ``W_n`` = 0 (no noise until learned).

The computation is fused: one GEMM against ``[A_1..A_E | W_r | W_n]`` gives the ``[T, E*r]``
mid activations and both logit sets; gating scales the mid activations; one GEMM against
the stacked ``B`` gives the delta. No ``[T, E, d_out]`` tensor is ever built, so the cost is
that of one rank-``E*r`` LoRA plus a ``2E``-row router.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainstacks_pl.config import StackConfig
from brainstacks_pl.layers.dtensor import assign_, full_tensor
from brainstacks_pl.layers.stack_format import TENSOR_NAMES, StackLayout

__all__ = ["MoELoRA", "MoEOutput", "top_k_gates", "load_balance_loss"]


class MoEOutput(NamedTuple):
    delta: Tensor
    """[..., d_out] the stack's additive contribution."""
    aux_loss: Tensor
    """Scalar load-balance loss; differentiable through the router probabilities."""
    expert_fraction: Tensor
    """[E] detached share of token assignments per expert (utilisation, for logging)."""


def top_k_gates(logits: Tensor, k: int) -> Tensor:
    """Softmax over the ``k`` largest logits, scattered back to ``[..., E]`` (zeros elsewhere)."""
    top_values, top_index = logits.topk(k, dim=-1)  # [..., k]
    return torch.zeros_like(logits).scatter(-1, top_index, top_values.softmax(dim=-1))


def load_balance_loss(logits: Tensor, gates: Tensor) -> tuple[Tensor, Tensor]:
    """Switch-style balance loss ``E * sum_e mean(p_e) * frac_e`` and the dispatch fractions.

    ``frac`` (share of the top-k assignments each expert got) is a count and has no
    gradient; the mean router probability carries it, which is what pushes the router
    towards balance. A perfectly balanced router scores exactly 1.
    """
    num_experts = logits.shape[-1]
    probs = logits.float().softmax(dim=-1).reshape(-1, num_experts)  # [T, E]
    dispatched = (gates > 0).float().reshape(-1, num_experts)  # [T, E]
    frac = (dispatched.sum(0) / dispatched.sum().clamp_min(1.0)).detach()  # [E], sums to 1
    return num_experts * (probs.mean(0) * frac).sum(), frac


class MoELoRA(nn.Module):
    """One trainable MoE-LoRA delta for a ``d_in -> d_out`` projection.

    Parameters are stacked tensors, not per-expert modules: ``in_proj`` (rows A_1..A_E, W_r,
    W_n) and ``B`` (a column block per expert), laid out as ``layers/stack_format.py`` declares.
    """

    def __init__(self, d_in: int, d_out: int, config: StackConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        self.d_in, self.d_out = d_in, d_out
        self.layout = StackLayout.of(d_in, d_out, config)
        self.in_proj = nn.Parameter(torch.empty(self.layout.shapes["in_proj"]))
        self.B = nn.Parameter(torch.zeros(self.layout.shapes["B"]))
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        layout = self.layout
        with torch.no_grad():
            # Kaiming-uniform with a = sqrt(5), as nn.Linear and LoRA initialise A.
            bound = 1.0 / math.sqrt(self.d_in)
            self.in_proj[layout.a].uniform_(-bound, bound, generator=generator)
            self.in_proj[layout.router].normal_(0.0, 0.02, generator=generator)
            self.in_proj[layout.noise].zero_()
            self.B.zero_()

    @property
    def A(self) -> Tensor:
        """[E*r, d_in] the stacked down-projections."""
        return self.in_proj[self.layout.a]

    def stack_tensors(self) -> dict[str, Tensor]:
        """The stack's parameters keyed by ``TENSOR_NAMES`` (the names a stack file uses)."""
        return {name: getattr(self, name) for name in TENSOR_NAMES}

    def forward(
        self, x: Tensor, null_basis: Tensor | None = None, noise_generator: torch.Generator | None = None
    ) -> MoEOutput:
        """Delta for ``x`` ([..., d_in]); with ``null_basis`` V ([d_out, K]) the delta is projected off span(V).

        ``noise_generator`` (on x's device) draws the gating noise; without it the global RNG does.
        """
        experts, rank = self.config.experts, self.config.rank
        x = x.to(self.in_proj.dtype)
        fused = F.linear(x, self.in_proj)  # [..., E*r + 2E]
        mid, logits, noise_logits = fused.split(self.layout.row_split, dim=-1)
        if self.training and self.config.noise:
            eps = torch.randn(logits.shape, generator=noise_generator, device=logits.device, dtype=logits.dtype)
            logits = logits + F.softplus(noise_logits) * eps
        gates = top_k_gates(logits, self.config.top_k)  # [..., E]
        aux_loss, frac = load_balance_loss(logits, gates)
        coef = (gates * self.config.scale).unsqueeze(-1)  # [..., E, 1]
        mid = (mid.unflatten(-1, (experts, rank)) * coef).flatten(-2)  # [..., E*r]
        B = self.B  # [d_out, E*r]
        if null_basis is not None and null_basis.numel():
            # Projecting the delta, delta - (delta V) V^T, equals projecting B first: (I - V V^T) B.
            # Same values and gradients, at a cost that does not grow with the token count.
            basis = null_basis.to(B.dtype)
            B = B - basis @ (basis.T @ B)
        delta = F.linear(mid, B)  # [..., d_out]
        return MoEOutput(delta, aux_loss, frac)

    @torch.no_grad()
    def project_out_(self, null_basis: Tensor) -> None:
        """``B <- B - V (V^T B)``: the stack can no longer write into span(V), whatever its input."""
        if null_basis.numel():
            B = full_tensor(self.B)  # FSDP2 keeps B as a DTensor shard between steps
            basis = null_basis.to(B.dtype)
            assign_(self.B, B - basis @ (basis.T @ B))
