r"""StackedLinear: a frozen base projection plus frozen MoE-LoRA stacks plus one active stack.

    y = W_base x + sum_{s frozen} w_{d(s)} * stack_s(x) + w_{d(active)} * active(x)

``w_d`` is the routing weight of a stack's domain: 1 when ungated or isolated, a per-sample
tensor (``[batch, n_domains]``) when routed. Frozen stacks are buffers in half precision and
are computed *together*: their ``[A | W_r]`` rows are concatenated into one GEMM and their
``B`` into another, so the op count does not grow with the number of stacks. The input
gradient flows through the base and the frozen stacks exactly (they are constants, not
detached inputs) unless ``StackConfig.detach_frozen_input`` opts into the cheaper backward.

Frozen stacks are selected by domain on the host (the domain of each stack is a Python
list), never by reading a device tensor, so no ``.item()`` sync happens in ``forward``.
Selecting the same stacks always runs the same GEMMs on the same operands, which is what
makes "as-frozen" evaluation bit-identical however many stacks were added later.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from brainstacks_pl.config import StackConfig
from brainstacks_pl.layers.context import StackContext
from brainstacks_pl.layers.moe_lora import MoELoRA, top_k_gates
from brainstacks_pl.layers.dtensor import full_tensor

__all__ = ["StackedLinear", "linear_shape", "UnsupportedLayerError"]


class UnsupportedLayerError(TypeError):
    """A target module is not a linear layer type that StackedLinear can wrap."""


def _torch_linear_shape(layer: nn.Module) -> tuple[int, int] | None:
    # bitsandbytes' Linear4bit / Linear8bitLt subclass nn.Linear and keep in/out_features.
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return None


def _conv1d_shape(layer: nn.Module) -> tuple[int, int] | None:
    # GPT-2 style transformers Conv1D stores its weight as [d_in, d_out].
    if type(layer).__name__ == "Conv1D" and hasattr(layer, "nf"):
        return layer.weight.shape[0], layer.nf
    return None


# First match wins; add a dispatcher here to support another base layer type.
_SHAPE_DISPATCHERS: list[Callable[[nn.Module], tuple[int, int] | None]] = [_torch_linear_shape, _conv1d_shape]


def linear_shape(layer: nn.Module, name: str = "") -> tuple[int, int]:
    """``(d_in, d_out)`` of a wrappable base layer, or a clear error naming the module."""
    for dispatch in _SHAPE_DISPATCHERS:
        shape = dispatch(layer)
        if shape is not None:
            return shape
    raise UnsupportedLayerError(
        f"cannot wrap module '{name}' of type {type(layer).__module__}.{type(layer).__qualname__}: "
        "StackedLinear supports torch.nn.Linear, bitsandbytes Linear4bit/Linear8bitLt and transformers Conv1D"
    )


def _storage_dtype(config: StackConfig) -> torch.dtype:
    return getattr(torch, config.frozen_dtype)


class StackedLinear(nn.Module):
    """Wraps ``base_layer`` (kept as is, frozen) and adds frozen and active MoE-LoRA stacks."""

    def __init__(self, base_layer: nn.Module, config: StackConfig, context: StackContext, name: str = ""):
        super().__init__()
        self.d_in, self.d_out = linear_shape(base_layer, name)
        self.base_layer = base_layer
        self.config = config
        self.name = name
        object.__setattr__(self, "context", context)  # shared, not a submodule
        self.active: MoELoRA | None = None
        self.active_domain: str | None = None
        self.frozen_domains: list[str] = []
        self.null_space_mode = "off"
        device = next(base_layer.parameters()).device
        experts, rank = config.experts, config.rank
        dtype = _storage_dtype(config)
        # Stacks live in stack files, not in this module's state_dict: buffers are non-persistent.
        self.register_buffer("frozen_in", torch.empty(0, experts * rank + experts, self.d_in, dtype=dtype, device=device), persistent=False)  # [S, E*r+E, d_in]
        self.register_buffer("frozen_Bt", torch.empty(0, experts * rank, self.d_out, dtype=dtype, device=device), persistent=False)  # [S, E*r, d_out]
        self.register_buffer("frozen_domain_index", torch.empty(0, dtype=torch.long, device=device), persistent=False)  # [S]
        self.register_buffer("null_basis", torch.empty(self.d_out, 0, device=device), persistent=False)  # [d_out, K]

    # ------------------------------------------------------------------ stack management
    @property
    def num_frozen(self) -> int:
        return len(self.frozen_domains)

    def add_active(self, domain: str, generator: torch.Generator | None = None) -> MoELoRA:
        """Start a new trainable stack for ``domain`` (B = 0: the layer's output is unchanged)."""
        if self.active is not None:
            raise RuntimeError(f"layer '{self.name}' already has an active stack; freeze it first")
        device = self.frozen_in.device
        stack = MoELoRA(self.d_in, self.d_out, self.config, generator=generator).to(device)
        stack.train(self.training)  # a stack added to a model in eval mode must not add gate noise
        self.active, self.active_domain = stack, domain
        return stack

    def freeze_active(self) -> dict[str, Tensor]:
        """Turn the active stack into a frozen one; return its tensors in storage precision.

        With ``delta``-mode null space the projection is folded into B first, so the frozen
        stack computes exactly what was trained and is exactly orthogonal to span(V).
        """
        if self.active is None:
            raise RuntimeError(f"layer '{self.name}' has no active stack to freeze")
        if self.null_space_mode == "delta":
            self.active.project_out_(self.null_basis)
        dtype = _storage_dtype(self.config)
        tensors = {"in_proj": full_tensor(self.active.in_proj.detach()).to(dtype).clone(), "B": full_tensor(self.active.B.detach()).to(dtype).clone()}
        self.append_frozen(tensors, self.active_domain)
        self.active, self.active_domain = None, None
        return tensors

    def append_frozen(self, tensors: dict[str, Tensor], domain: str) -> None:
        """Add a frozen stack from its file tensors (``in_proj`` [E*r+2E, d_in], ``B`` [d_out, E*r])."""
        experts, rank = self.config.experts, self.config.rank
        expected = {"in_proj": (experts * rank + 2 * experts, self.d_in), "B": (self.d_out, experts * rank)}
        for key, shape in expected.items():
            if key not in tensors:
                raise KeyError(f"layer '{self.name}': stack tensors lack '{key}'")
            if tuple(tensors[key].shape) != shape:
                raise ValueError(f"layer '{self.name}': stack tensor '{key}' has shape {tuple(tensors[key].shape)}, expected {shape}")
        dtype, device = _storage_dtype(self.config), self.frozen_in.device
        rows = tensors["in_proj"][: experts * rank + experts].to(device=device, dtype=dtype)  # drop W_n: no noise once frozen
        self.frozen_in = torch.cat([self.frozen_in, rows.unsqueeze(0)])
        self.frozen_Bt = torch.cat([self.frozen_Bt, tensors["B"].T.to(device=device, dtype=dtype).unsqueeze(0)])
        index = torch.tensor([self.context.domain_index(domain)], device=device)
        self.frozen_domain_index = torch.cat([self.frozen_domain_index, index])
        self.frozen_domains.append(domain)
        self.context.stack_selection_cache.clear()

    def clear_frozen(self) -> None:
        """Drop every frozen stack (inference swaps in the routed domains' stacks on demand)."""
        self.frozen_in = self.frozen_in[:0].clone()
        self.frozen_Bt = self.frozen_Bt[:0].clone()
        self.frozen_domain_index = self.frozen_domain_index[:0].clone()
        self.frozen_domains = []
        self.context.stack_selection_cache.clear()

    def set_null_basis(self, basis: Tensor | None) -> None:
        """Set V ([d_out, K], orthonormal columns) that the active stack must not write into."""
        if basis is None:
            basis = torch.empty(self.d_out, 0)
        if basis.shape[0] != self.d_out:
            raise ValueError(f"layer '{self.name}': null-space basis has {basis.shape[0]} rows, expected d_out={self.d_out}")
        self.null_basis = basis.detach().to(device=self.frozen_in.device, dtype=torch.float32)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        result = self.base_layer(x)
        context = self.context
        if context.mode == "base":
            return result
        frozen = self._frozen_delta(x.detach() if self.config.detach_frozen_input else x)
        if frozen is not None:
            result = result + frozen.to(result.dtype)
        if self.active is not None and context.active_enabled and context.selects(self.active_domain):
            basis = self.null_basis if self.null_space_mode == "delta" else None
            out = self.active(x, basis, context.noise_generator)
            delta = out.delta
            if context.mode == "routed":
                index = torch.tensor([context.domain_index(self.active_domain)], device=x.device)
                delta = delta * self._sample_weights(index, x).squeeze(-1)  # [B, 1, 1] broadcast
            if context.aux_losses is not None:
                context.aux_losses.append(out.aux_loss)
            if context.expert_fractions is not None:
                context.expert_fractions.append(out.expert_fraction)
            result = result + delta.to(result.dtype)
        return result

    def _selected(self) -> slice | list[int] | None:
        selected = [i for i, domain in enumerate(self.frozen_domains) if self.context.selects(domain)]
        if not selected:
            return None
        if selected == list(range(selected[0], selected[-1] + 1)):
            return slice(selected[0], selected[-1] + 1)  # contiguous: a view, no copy
        return selected

    def _sample_weights(self, domain_index: Tensor, x: Tensor) -> Tensor:
        """[B, 1, S, 1] routing weights for stacks of the given domain indices (x is [B, T, d])."""
        weights = self.context.weights
        if weights is None:
            raise RuntimeError("routed mode needs a [batch, n_domains] weights tensor")
        if x.dim() != 3 or weights.shape[0] != x.shape[0]:
            raise ValueError(f"routed mode: weights of shape {tuple(weights.shape)} do not match a batch of shape {tuple(x.shape)}")
        picked = weights.to(device=x.device, dtype=x.dtype).index_select(1, domain_index)  # [B, S]
        return picked[:, None, :, None]

    def frozen_delta(self, x: Tensor) -> Tensor | None:
        """The summed output of the frozen stacks the current routing selects ([..., d_out]), or None.

        Public so that measurements (the null-space collection) can read a layer's frozen
        contribution from its input without recomputing the base projection.
        """
        return self._frozen_delta(x)

    def _frozen_delta(self, x: Tensor) -> Tensor | None:
        selection = self._selected()
        if selection is None:
            return None
        experts, rank = self.config.experts, self.config.rank
        if isinstance(selection, slice):
            w_in, w_out, domains = self.frozen_in[selection], self.frozen_Bt[selection], self.frozen_domain_index[selection]
        else:
            index = torch.tensor(selection, device=self.frozen_in.device)
            w_in, w_out = self.frozen_in.index_select(0, index), self.frozen_Bt.index_select(0, index)
            domains = self.frozen_domain_index.index_select(0, index)
        num = w_in.shape[0]
        fused = x @ w_in.reshape(-1, self.d_in).to(x.dtype).T  # [..., S*(E*r+E)]
        fused = fused.unflatten(-1, (num, experts * rank + experts))  # [..., S, E*r+E]
        mid, logits = fused.split([experts * rank, experts], dim=-1)  # [..., S, E*r], [..., S, E]
        coef = top_k_gates(logits, self.config.top_k) * self.config.scale  # [..., S, E]
        if self.context.mode == "routed":
            coef = coef * self._sample_weights(domains, x)  # [B, T, S, E]
        mid = (mid.unflatten(-1, (experts, rank)) * coef.unsqueeze(-1)).flatten(-3)  # [..., S*E*r]
        return mid @ w_out.reshape(-1, self.d_out).to(x.dtype)  # [..., d_out]

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, frozen={self.num_frozen}, active={self.active_domain!r}"
