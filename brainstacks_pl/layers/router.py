r"""MetaRouter: which domains' stacks should fire for a prompt (Brainstacks, section "meta-router").

    x      = 0.45 * h_mid + 0.55 * h_last          base-only hidden states, stacks off   [B, T, d]
    t      = LayerNorm(W_p x)                        token projection                      [B, T, H]
    c_q    = softmax_T(q . W_k t / sqrt(H)) W_v t    one global + one query per domain     [B, 1+D, H]
    z_d    = MLP([c_global ; c_d])                   shared fusion MLP (GELU, dropout)     [B, D]
    p_d    = sigmoid((z_d + b_d) / tau),  tau = clamp(exp(log_tau), 0.3, 3)

Sigmoid, not softmax: a medical question that needs arithmetic wants both the medical and
the math stack, so every domain is an independent yes/no. The features come from the base
model with every stack switched off, so the router's input does not change when stacks are
added, retrained or removed. ~2.1M parameters at ``hidden=512`` on a 2048-wide base (the
projection ``d x H`` dominates).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # no runtime import: model.py imports this package
    from brainstacks_pl.model import BrainstacksModel

__all__ = ["MetaRouter", "base_features"]


class MetaRouter(nn.Module):
    """Cross-attention pooling of base hidden states into one sigmoid per domain.

    Args:
        d_model: Hidden size of the base model (the feature width).
        n_domains: Number of domains (one logit each, in curriculum order).
        hidden: Width of the projected tokens and of the fusion MLP (512 in the paper).
        dropout: Dropout of the fusion MLP.
        min_temperature, max_temperature: Clamp of the learned temperature.
    """

    def __init__(
        self,
        d_model: int,
        n_domains: int,
        hidden: int = 512,
        dropout: float = 0.1,
        min_temperature: float = 0.3,
        max_temperature: float = 3.0,
    ):
        super().__init__()
        if n_domains < 1 or d_model < 1 or hidden < 1:
            raise ValueError(f"MetaRouter needs d_model, n_domains, hidden >= 1, got {d_model}, {n_domains}, {hidden}")
        self.d_model, self.n_domains, self.hidden = d_model, n_domains, hidden
        self.min_temperature, self.max_temperature = min_temperature, max_temperature
        self.proj = nn.Linear(d_model, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.key = nn.Linear(hidden, hidden, bias=False)
        self.value = nn.Linear(hidden, hidden, bias=False)
        self.global_query = nn.Parameter(torch.randn(hidden) * hidden**-0.5)  # [H]
        self.domain_queries = nn.Parameter(torch.randn(n_domains, hidden) * hidden**-0.5)  # [D, H]
        self.fusion = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.domain_bias = nn.Parameter(torch.zeros(n_domains))  # [D]
        self.log_temperature = nn.Parameter(torch.zeros(()))  # tau = 1 at init

    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.exp().clamp(self.min_temperature, self.max_temperature)

    def forward(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        """Logits [B, D] from features [B, T, d_model] (mask [B, T], 1 = real token)."""
        tokens = self.norm(self.proj(features))  # [B, T, H]
        keys, values = self.key(tokens), self.value(tokens)  # [B, T, H]
        queries = torch.cat([self.global_query[None], self.domain_queries])  # [1+D, H]
        scores = torch.einsum("qh,bth->bqt", queries, keys) / math.sqrt(self.hidden)  # [B, 1+D, T]
        if mask is not None:
            scores = scores.masked_fill(~mask.bool()[:, None, :], torch.finfo(scores.dtype).min)
        context = torch.einsum("bqt,bth->bqh", scores.softmax(-1), values)  # [B, 1+D, H]
        pooled, per_domain = context[:, :1], context[:, 1:]  # [B, 1, H], [B, D, H]
        fused = torch.cat([pooled.expand_as(per_domain), per_domain], dim=-1)  # [B, D, 2H]
        logits = self.fusion(fused).squeeze(-1) + self.domain_bias  # [B, D]
        return logits / self.temperature

    def probabilities(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        """Independent per-domain probabilities [B, D] (sigmoid of the tempered logits)."""
        return torch.sigmoid(self.forward(features, mask))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_domains={self.n_domains}, hidden={self.hidden}"


@torch.no_grad()
def base_features(
    stacks: BrainstacksModel, input_ids: Tensor, attention_mask: Tensor, mid_weight: float = 0.45
) -> Tensor:
    """``mid_weight * h_mid + (1 - mid_weight) * h_last`` of the base with every stack off.

    ``h_mid`` is the output of the middle decoder layer (``hidden_states[n_layers // 2]``),
    ``h_last`` the final (normed) hidden state. Returns float32 [B, T, d].
    """
    with stacks.base_only():
        out = stacks.model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False
        )
    hidden = out.hidden_states  # (embeddings, layer 1, ..., layer n)
    h_mid, h_last = hidden[(len(hidden) - 1) // 2], hidden[-1]
    return mid_weight * h_mid.float() + (1.0 - mid_weight) * h_last.float()
