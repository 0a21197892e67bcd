"""The shared KV cache of a continuous batch: rows join (left-padded to a common length) and leave.

Every row is left-padded: its real tokens are the last ``n`` columns of the cache and of the
attention ``mask`` [B, L] (1 on real tokens). Merging two batches pads the shorter one on the left
with zero keys/values under mask 0, which attention ignores, so each row computes what it would
alone. Dropping rows trims leading columns that no remaining row uses.

Only full-attention ``DynamicLayer`` caches are supported (sliding-window layers would need the
window to move per row); ``check_cache`` says so at startup instead of mid-request.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache

__all__ = ["merge_rows", "select_rows", "check_cache"]


def _layers(cache: DynamicCache) -> list[tuple[Tensor, Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]  # each [B, H, L, d]


def check_cache(cache: DynamicCache) -> None:
    """Raise for cache layers this module cannot re-batch (anything but full attention)."""
    for index, layer in enumerate(cache.layers):
        if getattr(layer, "is_sliding", False) or not hasattr(layer, "keys"):
            raise NotImplementedError(
                f"cache layer {index} is {type(layer).__name__}: "
                "continuous batching supports full-attention layers only"
            )


def _pad_left(t: Tensor, columns: int, dim: int) -> Tensor:
    if columns == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [columns, 0]  # F.pad lists dims from the last one backwards
    return F.pad(t, pad)


def merge_rows(
    cache_a: DynamicCache, mask_a: Tensor, cache_b: DynamicCache, mask_b: Tensor
) -> tuple[DynamicCache, Tensor]:
    """Rows of ``a`` then rows of ``b`` in one cache, left-padded to the longer length."""
    length = max(mask_a.shape[1], mask_b.shape[1])
    pad_a, pad_b = length - mask_a.shape[1], length - mask_b.shape[1]
    layers = [
        (
            torch.cat([_pad_left(ka, pad_a, 2), _pad_left(kb, pad_b, 2)]),
            torch.cat([_pad_left(va, pad_a, 2), _pad_left(vb, pad_b, 2)]),
        )
        for (ka, va), (kb, vb) in zip(_layers(cache_a), _layers(cache_b))
    ]
    mask = torch.cat([_pad_left(mask_a, pad_a, 1), _pad_left(mask_b, pad_b, 1)])  # [Ba+Bb, L]
    return DynamicCache(layers), mask


def select_rows(cache: DynamicCache, mask: Tensor, rows: list[int]) -> tuple[DynamicCache, Tensor]:
    """Keep ``rows`` (in that order) and drop the leading columns that none of them uses."""
    index = torch.tensor(rows, device=mask.device)
    mask = mask.index_select(0, index)
    start = int(mask.any(0).long().argmax())  # first column some kept row uses (one host sync)
    layers = [
        (k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:]) for k, v in _layers(cache)
    ]
    return DynamicCache(layers), mask[:, start:]
