"""Reading and writing parameters that may be FSDP2 ``DTensor`` shards (no-ops for plain tensors).

The layers use these to freeze, restore and project the active stack whatever the strategy;
``brainstacks_pl.sharding`` applies the sharding itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["assign_", "full_tensor"]


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return None
    return DTensor


def full_tensor(tensor: Tensor) -> Tensor:
    """The whole tensor: gathers a DTensor shard from every rank (a collective), else itself."""
    dtensor = _dtensor_type()
    if dtensor is not None and isinstance(tensor, dtensor):
        return tensor.full_tensor()
    return tensor


@torch.no_grad()
def assign_(param: Tensor, value: Tensor) -> None:
    """``param.copy_(value)`` where ``param`` may be a DTensor shard and ``value`` the full tensor."""
    dtensor = _dtensor_type()
    if dtensor is not None and isinstance(param, dtensor) and not isinstance(value, dtensor):
        from torch.distributed.tensor import distribute_tensor

        value = distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements)
    param.copy_(value)
