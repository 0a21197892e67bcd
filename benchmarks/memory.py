"""Bytes autograd saves for backward: the memory measurement shared by bench_layer and bench_model."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn


def saved_storage_bytes(model: nn.Module, step: Callable[[], object], also_owned: Iterable[Tensor] = ()) -> int:
    """Bytes of the distinct storages autograd keeps while ``step()`` runs, leaving out the
    model's parameters and buffers and ``also_owned`` (persistent state counted separately)."""
    owned = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers(), *also_owned)}
    saved: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in owned:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = step()
    del out
    return sum(saved.values())
