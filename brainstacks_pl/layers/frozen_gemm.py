"""The frozen stacks' computation: the selected stacks' GEMM operands (``[A | W_r]`` rows and
``B^T`` of every stack, concatenated) and the two-GEMM forward over them.

Kept apart from ``StackedLinear`` (which owns the buffers, the selection and the operand
cache): this is the arithmetic, the same for one stack or fifty.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from brainstacks_pl.layers.moe_lora import top_k_gates
from brainstacks_pl.layers.stack_format import StackLayout

__all__ = ["CastMatmul", "FrozenOperands", "build_operands", "frozen_forward"]


class FrozenOperands(NamedTuple):
    """The selected frozen stacks, ready for the two GEMMs."""

    w_in: Tensor
    """[S*(E*r+E), d_in] ``[A | W_r]`` rows of every selected stack, compute dtype."""
    w_out: Tensor
    """[S*E*r, d_out] their ``B^T``, compute dtype, times ``config.scale`` unless ``scale`` is it."""
    scale: float
    """What the gates still multiply by: 1.0 when the LoRA scale is folded into ``w_out``."""
    domains: tuple[str, ...]
    """Domain of each selected stack (columns of the routing weights)."""
    cast_per_call: bool = False
    """``w_in``/``w_out`` are the stored tensors, cast inside ``CastMatmul`` on every call
    (``StackContext.cache_frozen`` False: no persistent compute-dtype copy)."""


class CastMatmul(torch.autograd.Function):
    """``a @ w.to(a.dtype)`` that keeps the stored ``w`` for backward and casts it again there,
    so autograd holds no compute-dtype copy of a frozen stack between forward and backward."""

    @staticmethod
    def forward(ctx, a: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(w)
        return a @ w.to(a.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (w,) = ctx.saved_tensors
        return grad @ w.to(grad.dtype).T, None


def build_operands(
    frozen_in: Tensor,
    frozen_Bt: Tensor,
    selection: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    lora_scale: float,
    domains: list[str],
    fold: bool = True,
) -> FrozenOperands:
    """The operands of the stacks ``selection`` picks from the buffers (``[S, E*r+E, d_in]``,
    ``[S, E*r, d_out]``) in ``dtype`` on ``device``: views when nothing needs copying, and
    with ``fold`` the LoRA scale folded into ``B`` wherever it is copied anyway."""
    first, last = selection[0], selection[-1] + 1
    contiguous = selection == tuple(range(first, last))
    if contiguous:
        w_in, w_out = frozen_in[first:last], frozen_Bt[first:last]  # views
    else:
        index = torch.tensor(selection, device=frozen_in.device)
        w_in, w_out = frozen_in.index_select(0, index), frozen_Bt.index_select(0, index)
    copied = not contiguous or frozen_Bt.dtype != dtype or frozen_Bt.device != device
    w_in = w_in.reshape(-1, frozen_in.shape[-1]).to(device=device, dtype=dtype)  # [S*(E*r+E), d_in]
    w_out = w_out.reshape(-1, frozen_Bt.shape[-1]).to(device=device, dtype=dtype)  # [S*E*r, d_out]
    scale = lora_scale
    if copied and fold:  # never into a half-precision copy: that would round differently
        w_out, scale = w_out * scale, 1.0
    return FrozenOperands(w_in, w_out, scale, tuple(domains[i] for i in selection))


def frozen_forward(
    x: Tensor,
    operands: FrozenOperands,
    layout: StackLayout,
    top_k: int,
    weights: Tensor | None,
    result: Tensor | None = None,
) -> Tensor:
    """``result`` plus the frozen stacks' delta (just the delta when ``result`` is None);
    ``weights`` ([B, S], the routing weights times ``operands.scale``) in routed mode, else None."""
    if operands.cast_per_call:
        fused = CastMatmul.apply(x, operands.w_in.T)  # [..., S*(E*r+E)]
    else:
        fused = F.linear(x, operands.w_in)  # [..., S*(E*r+E)]
    fused = fused.unflatten(-1, (len(operands.domains), layout.frozen_rows))  # [..., S, E*r+E]
    mid, logits = fused.split(layout.row_split[:2], dim=-1)  # [..., S, E*r], [..., S, E]
    coef = top_k_gates(logits, top_k)  # [..., S, E]
    if weights is not None:
        coef = coef * weights.view(weights.shape[0], *[1] * (coef.dim() - 3), weights.shape[1], 1)  # [B, T, S, E]
    elif operands.scale != 1.0:
        coef = coef * operands.scale
    mid = (mid.unflatten(-1, (layout.experts, layout.rank)) * coef.unsqueeze(-1)).flatten(-3)  # [..., S*E*r]
    if result is None or operands.cast_per_call:
        delta = (
            CastMatmul.apply(mid, operands.w_out) if operands.cast_per_call else mid @ operands.w_out
        )  # [..., d_out]
        return delta if result is None else result + delta.to(result.dtype).reshape(result.shape)
    if result.dtype == mid.dtype and result.is_contiguous():
        return torch.addmm(
            result.reshape(-1, operands.w_out.shape[-1]), mid.reshape(-1, mid.shape[-1]), operands.w_out
        ).view(result.shape)
    return result + (mid @ operands.w_out).to(result.dtype).reshape(result.shape)
