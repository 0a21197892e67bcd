"""Router inputs: prompt token ids (the SFT prompt template) and base-only features.

The router sees exactly the tokens a stack sees before the answer starts,
``[bos] + format_prompt(prompt)`` (the one canonical rendering and encoder, ``prompts.py``),
cut to bos and the last ``router_seq_len - 1`` tokens, the same end every prompt encoder keeps. The base is
frozen and the features are computed with every stack off, so one prompt's features never
change during router training: ``compute_features`` runs the base once per unique prompt and
the router then trains on cached tensors (see docs/router.md for the memory this costs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from brainstacks_pl.layers.router import base_features
from brainstacks_pl.prompts import DEFAULT_PROMPT_TEMPLATE, prompt_ids
from brainstacks_pl.routing.spec import RouterSpec
from brainstacks_pl.tokenization import pad_token_id

__all__ = ["pad_right", "compute_features", "collate_features"]


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-padded ``(ids [B, L], mask [B, L])``; right padding leaves causal positions unchanged."""
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


@torch.no_grad()
def compute_features(
    stacks,
    tokenizer,
    prompts: Sequence[str],
    template: str = DEFAULT_PROMPT_TEMPLATE,
    seq_len: int = RouterSpec.router_seq_len,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    mid_weight: float = RouterSpec.mid_weight,
) -> list[Tensor]:
    """Base-only router features per prompt: a list of [T_i, d] tensors on the CPU."""
    pad_id = pad_token_id(tokenizer)
    encoded = [prompt_ids(tokenizer, p, template, seq_len) for p in prompts]
    out: list[Tensor] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        ids, mask = pad_right(chunk, pad_id)
        feats = base_features(stacks, ids.to(device), mask.to(device), mid_weight)  # [b, L, d]
        out.extend(feats[row, : len(seq)].to("cpu", dtype) for row, seq in enumerate(chunk))
    return out


def collate_features(features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack variable-length [T_i, d] features into ``(features [B, T, d], mask [B, T] bool)``."""
    length = max(f.shape[0] for f in features)
    batch = features[0].new_zeros(len(features), length, features[0].shape[-1])
    mask = torch.zeros(len(features), length, dtype=torch.bool)
    for row, feat in enumerate(features):
        batch[row, : feat.shape[0]] = feat
        mask[row, : feat.shape[0]] = True
    return batch, mask
