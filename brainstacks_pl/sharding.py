"""FSDP2 sharding of a stacked model, applied by Lightning's ``ModelParallelStrategy``.

Why FSDP2 (``torch.distributed.fsdp.fully_shard``) and not ``FSDPStrategy`` (FSDP1): a
curriculum adds a new active stack to the *same* model before every round. FSDP1 wraps the
module tree in place into flat parameters once; Lightning then refuses to re-wrap, so a stack
added later would sit outside every flat parameter and never be synchronised. FSDP2 shards
per module and lets us shard each new stack as its own unit when its round starts, while the
decoder layers (frozen base weights only) stay sharded from the first round. It also runs on
CPU processes (gloo), so the test suite exercises it.

Outside forward/backward, FSDP2 parameters are ``DTensor`` shards. Code that reads or
writes the active stack's weights directly (freezing, best-snapshot restore, the null-space
weight projection) goes through :func:`full_tensor` and :func:`assign_`; both are no-ops
for plain tensors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from brainstacks_pl.model import BrainstacksModel

from brainstacks_pl.layers.dtensor import assign_, full_tensor

__all__ = ["assign_", "data_parallel_mesh", "full_tensor", "shard_stacks"]


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks, by Hugging Face's ``_no_split_modules`` (e.g. LlamaDecoderLayer).

    Matched along the MRO: ``fully_shard`` swaps a module's class for an ``FSDP<Name>`` subclass.
    """
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [module for module in model.modules() if any(cls.__name__ in names for cls in type(module).__mro__)]
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} names no transformer block class in _no_split_modules; "
            "FSDP sharding needs the decoder-layer class to shard the base layer by layer"
        )
    return blocks


def data_parallel_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The mesh FSDP shards over: ModelParallelStrategy's ``data_parallel`` dimension.

    Tensor parallelism is refused: stacks sit inside the projections that a tensor-parallel
    plan would split, and nothing here splits them consistently.
    """
    names = tuple(mesh.mesh_dim_names or ())
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            f"tensor_parallel_size={mesh['tensor_parallel'].size()} is not supported for stacked models; "
            "use ModelParallelStrategy(data_parallel_size=<devices x nodes>, tensor_parallel_size=1) (plain FSDP2)"
        )
    return mesh["data_parallel"] if "data_parallel" in names else mesh


def shard_stacks(stacks: BrainstacksModel, mesh: DeviceMesh, reshard_after_forward: bool = True) -> int:
    """Shard what is not sharded yet: each active stack, each decoder layer, then the base model.

    Idempotent, so ``configure_model`` can call it at every round: the first call shards the
    frozen base layer by layer; later calls only shard the new active stack (its own unit, so
    no sharded group ever mixes trainable and frozen tensors). Frozen stacks are buffers and
    stay replicated. Returns how many modules were sharded by this call.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    def shard(module: nn.Module) -> int:
        if isinstance(module, FSDPModule):
            return 0
        fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)
        return 1

    count = sum(shard(stack) for stack in stacks.active_stacks().values())
    count += sum(shard(block) for block in _blocks(stacks.model))
    return count + shard(stacks.model)
