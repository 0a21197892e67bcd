"""GRPO's rollouts: sampling completions with the policy, their per-token log-probabilities
and their text.

Kept apart from ``grpo.py`` so the optimisation loop reads as the algorithm; these are the
three model-facing primitives it (and validation) call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from brainstacks_pl.generation import generate
from brainstacks_pl.tokenization import pad_token_id

__all__ = ["Rollout"]


class Rollout:
    """Sampling and scoring primitives of ``GRPOModule``: needs ``stacks`` and ``tokenizer``."""

    @torch.no_grad()
    def sample(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        max_new_tokens: int,
        temperature: float | None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Append up to ``max_new_tokens`` tokens to left-padded prompts ([B, P]) with the KV
        cache (``generation.generate``); greedy when ``temperature`` is None. Returns
        ``(sequences [B, P+C], completion_mask [B, C])``; the mask covers each completion up to
        and including its eos."""
        return generate(
            self.stacks.model,
            input_ids,
            attention_mask,
            max_new_tokens,
            temperature,
            generator,
            self.tokenizer.eos_token_id,
            pad_token_id(self.tokenizer),
        )

    def token_logps(self, sequences: Tensor, attention_mask: Tensor, prompt_len: int) -> tuple[Tensor, Tensor]:
        """Per-token log-probabilities of the completion tokens [B, C] and the aux loss."""
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        out = self.stacks(sequences, attention_mask, position_ids=position_ids)
        logits = out.logits[:, prompt_len - 1 : -1].float()  # [B, C, V] predicts tokens P..end
        targets = sequences[:, prompt_len:]  # [B, C]
        return -F.cross_entropy(logits.transpose(1, 2), targets, reduction="none"), out.aux_loss

    def decode(self, sequences: Tensor, completion_mask: Tensor, prompt_len: int) -> list[str]:
        completions = sequences[:, prompt_len:]
        return [
            self.tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=True)
            for row, m in zip(completions, completion_mask)
        ]
