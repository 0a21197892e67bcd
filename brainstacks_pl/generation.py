"""Batched autoregressive decoding with a KV cache, shared by GRPO's rollouts and routed inference.

Layout: prompts are **left-padded** ``[B, P]`` and ``position_ids = cumsum(mask) - 1``, so every
row's real tokens sit at positions ``0..n-1`` whatever its padding, and the same layout scores the
sampled sequences afterwards (``GRPOModule.token_logps``). Each step appends one token per row;
a row that has emitted eos (or reached its length budget) gets ``pad`` with mask 0 from then on.

Why a KV cache is valid with stacks: every stack lives inside a ``Linear`` layer and acts on each
token on its own (the MoE gate included), so the keys and values of earlier tokens do not change
when later tokens are appended; the routing scope (``ungated``/``routed``/``active_off``...) is
fixed for the whole call. Gating *noise* is the exception (a cached and an uncached step would
draw it differently), so decode with the stacks in eval mode.

The cached path feeds the prompt once and then one token per step (``O(P + C)`` token forwards
instead of ``O(C * (P + C))``); ``use_cache=False`` recomputes the whole sequence each step and
exists to test that both give the same tokens under the same seed.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["Decoded", "generate", "pad_left"]


class Decoded(NamedTuple):
    sequences: Tensor
    """[B, P + C] prompts followed by the generated tokens (``pad`` after a row finished)."""
    completion_mask: Tensor
    """[B, C] 1 on each row's generated tokens up to and including its eos."""


def pad_left(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-padded ``(ids [B, P], mask [B, P])``: generation appends on the right."""
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, length - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, length - len(seq) :] = 1
    return ids, mask


def _next_token(logits: Tensor, temperature: float | None, generator: torch.Generator | None) -> Tensor:
    """[B, V] -> [B]: argmax when ``temperature`` is None, else a draw from softmax(logits / T)."""
    if temperature is None:
        return logits.argmax(-1)
    return torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator).squeeze(1)


def _forward_keywords(model: nn.Module) -> tuple[str, dict]:
    """The name of the cache argument and "last position only" logits, as this transformers
    version spells them: ``cache`` (>= 5.2x) or ``past_key_values``; ``logits_to_keep`` or
    ``num_logits_to_keep`` (4.4x), left out where the model has neither."""
    params = inspect.signature(model.forward).parameters
    cache = "cache" if "cache" in params else "past_key_values"
    keep = next(({name: 1} for name in ("logits_to_keep", "num_logits_to_keep") if name in params), {})
    return cache, keep


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    max_new_tokens: int,
    temperature: float | None = None,
    generator: torch.Generator | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    max_length: int | None = None,
    use_cache: bool = True,
) -> Decoded:
    """Append up to ``max_new_tokens`` tokens to left-padded prompts.

    Args:
        model: A Hugging Face causal LM (``BrainstacksModel.model``: the stacks are inside it, the
            routing scope of the caller applies).
        input_ids: [B, P] left-padded prompts; attention_mask: [B, P], 0 on padding.
        temperature: None decodes greedily; > 0 samples with ``generator`` (seeded by the caller
            so reruns are reproducible).
        eos_token_id: A row stops after emitting it (None: rows run to ``max_new_tokens``).
        max_length: The model's context: a row stops once its real length reaches it.
        use_cache: Reuse keys/values of earlier tokens (see the module docstring).
    """
    from transformers import DynamicCache

    batch, device = input_ids.shape[0], input_ids.device
    mask = attention_mask.long()
    budget = torch.full((batch,), max_new_tokens, device=device)  # [B] tokens each row may add
    if max_length is not None:
        budget = torch.minimum(budget, max_length - mask.sum(1))
    done = budget <= 0  # [B]
    cache_name, keep = _forward_keywords(model)
    cache = {cache_name: DynamicCache()} if use_cache else {}
    step_ids, generated = input_ids, []
    for step in range(max_new_tokens):
        if bool(done.all()):
            break
        positions = (mask.cumsum(-1) - 1).clamp_min(0)  # [B, T]: left padding keeps positions
        if use_cache:
            out = model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=positions[:, -step_ids.shape[1] :],
                use_cache=True,
                **keep,
                **cache,
            )
        else:
            ids = torch.cat([input_ids, *generated], 1) if generated else input_ids
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, **keep)
        token = _next_token(out.logits[:, -1].float(), temperature, generator)  # [B]
        token = torch.where(done, torch.full_like(token, pad_token_id), token)
        mask = torch.cat([mask, (~done).long()[:, None]], 1)
        generated.append(token[:, None])
        step_ids = token[:, None]
        if eos_token_id is not None:
            done = done | (token == eos_token_id)
        done = done | (budget <= step + 1)
    sequences = torch.cat([input_ids, *generated], 1)
    return Decoded(sequences, mask[:, input_ids.shape[1] :])
