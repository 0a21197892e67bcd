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

Speed: the selected stacks' operands are cast to the compute dtype once and cached per
(selection, dtype) with the LoRA scale folded into the cached ``B`` (never into the stored
buffers or files), so a forward does no casts and autograd keeps references to the cache,
not per-call copies; the last GEMM adds into the base output (``addmm``). Routed mode takes
``[B, T, d]`` inputs and the ``[B*T, d]`` ones that models such as OPT feed their MLP.

The frozen stacks' operands and two-GEMM forward are in ``frozen_gemm.py``; which base layers
can be wrapped, in ``linear_shape.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from brainstacks_pl.config import StackConfig
from brainstacks_pl.layers.context import StackContext
from brainstacks_pl.layers.dtensor import full_tensor
from brainstacks_pl.layers.frozen_gemm import FrozenOperands, build_operands, frozen_forward
from brainstacks_pl.layers.linear_shape import UnsupportedLayerError, linear_shape
from brainstacks_pl.layers.moe_lora import MoELoRA
from brainstacks_pl.layers.stack_format import StackLayout, check_shapes

__all__ = ["StackedLinear", "linear_shape", "UnsupportedLayerError"]


# Selections whose operands stay cached per layer: routed serving uses one, training plus
# as-frozen validation two; more would hold one more copy of the stacks each.
_CACHED_SELECTIONS = 2


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
        self.layout = StackLayout.of(self.d_in, self.d_out, config)
        device = next(base_layer.parameters()).device
        dtype = _storage_dtype(config)
        # Stacks live in stack files, not in this module's state_dict: buffers are non-persistent.
        rows, width = self.layout.frozen_rows, self.layout.mid_width
        self.register_buffer(
            "frozen_in", torch.empty(0, rows, self.d_in, dtype=dtype, device=device), persistent=False
        )  # [S, E*r+E, d_in]
        self.register_buffer(
            "frozen_Bt", torch.empty(0, width, self.d_out, dtype=dtype, device=device), persistent=False
        )  # [S, E*r, d_out]
        self.register_buffer("null_basis", torch.empty(self.d_out, 0, device=device), persistent=False)  # [d_out, K]
        self._operand_cache: dict[tuple, FrozenOperands] = {}

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
        tensors = {name: full_tensor(t.detach()).to(dtype).clone() for name, t in self.active.stack_tensors().items()}
        self.push_frozen(tensors, self.active_domain)
        self.active, self.active_domain = None, None
        return tensors

    def append_frozen(self, tensors: dict[str, Tensor], domain: str) -> None:
        """Add a frozen stack from its file tensors, after checking their names and shapes."""
        check_shapes(tensors, self.layout.shapes, f"layer '{self.name}'")
        self.push_frozen(tensors, domain)

    def push_frozen(self, tensors: dict[str, Tensor], domain: str) -> None:
        """Add a frozen stack from tensors already checked against ``self.layout`` (names and shapes).

        For callers that checked a whole stack at once (``BrainstacksModel.load_frozen_stack``)
        or made the tensors themselves (``freeze_active``): one check per load, not one per layer.
        """
        self.context.domain_index(domain)  # raises for an unknown domain
        dtype, device = _storage_dtype(self.config), self.frozen_in.device
        rows = tensors["in_proj"][: self.layout.frozen_rows].to(
            device=device, dtype=dtype
        )  # A | W_r: no noise once frozen
        self.frozen_in = torch.cat([self.frozen_in, rows.unsqueeze(0)])
        self.frozen_Bt = torch.cat([self.frozen_Bt, tensors["B"].T.to(device=device, dtype=dtype).unsqueeze(0)])
        self.frozen_domains.append(domain)
        self._drop_operands()

    def clear_frozen(self) -> None:
        """Drop every frozen stack (inference swaps in the routed domains' stacks on demand)."""
        self.frozen_in = self.frozen_in[:0].clone()
        self.frozen_Bt = self.frozen_Bt[:0].clone()
        self.frozen_domains = []
        self._drop_operands()

    def set_null_basis(self, basis: Tensor | None) -> None:
        """Set V ([d_out, K], orthonormal columns) that the active stack must not write into."""
        if basis is None:
            basis = torch.empty(self.d_out, 0)
        if basis.shape[0] != self.d_out:
            raise ValueError(
                f"layer '{self.name}': null-space basis has {basis.shape[0]} rows, expected d_out={self.d_out}"
            )
        self.null_basis = basis.detach().to(device=self.frozen_in.device, dtype=torch.float32)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        result = self.base_layer(x)
        context = self.context
        if context.mode == "base":
            return result
        routed = context.mode == "routed"
        xs = self._per_sample(x) if routed else x  # routed: [B, T, d_in], whatever layout the model feeds
        result = self._add_frozen(xs.detach() if self.config.detach_frozen_input else xs, result)
        if self.active is not None and context.active_enabled and context.selects(self.active_domain):
            basis = self.null_basis if self.null_space_mode == "delta" else None
            out = self.active(xs, basis, context.noise_generator)
            delta = out.delta
            if routed:
                weight = context.routed_columns((self.active_domain,), 1.0, delta.dtype, delta.device)  # [B, 1]
                delta = delta * weight.unsqueeze(-1)  # [B, T, d_out] * [B, 1, 1]
            if context.aux_losses is not None:
                context.aux_losses.append(out.aux_loss)
            if context.expert_fractions is not None:
                context.expert_fractions.append(out.expert_fraction)
            result = result + delta.to(result.dtype).reshape(result.shape)
        return result

    def _per_sample(self, x: Tensor) -> Tensor:
        """``x`` as ``[B, T, d_in]`` with B the rows of the routing weights.

        Most models feed ``[B, T, d]``; some (OPT's MLP) flatten the tokens to ``[B*T, d]``
        first, batch-major, which is undone here so each row gets its own sample's weights.
        """
        weights = self.context.weights
        if weights is None:
            raise RuntimeError("routed mode needs a [batch, n_domains] weights tensor")
        batch = weights.shape[0]
        if x.dim() >= 3 and x.shape[0] == batch:
            return x.flatten(1, -2)
        if x.dim() == 2 and batch and x.shape[0] % batch == 0:
            return x.unflatten(0, (batch, -1))
        raise ValueError(
            f"routed mode: weights of shape {tuple(weights.shape)} do not match a batch of shape {tuple(x.shape)}"
        )

    def frozen_delta(self, x: Tensor) -> Tensor | None:
        """The summed output of the frozen stacks the current routing selects ([..., d_out]), or None.

        Public so that measurements (the null-space collection) can read a layer's frozen
        contribution from its input without recomputing the base projection.
        """
        delta = self._add_frozen(self._per_sample(x) if self.context.mode == "routed" else x)
        return None if delta is None else delta.reshape(*x.shape[:-1], self.d_out)

    def _add_frozen(self, x: Tensor, result: Tensor | None = None) -> Tensor | None:
        """``result`` plus the selected frozen stacks' delta (just the delta when ``result`` is None).

        Kernels per call: one A GEMM, the top-k gate for all stacks at once (topk, softmax,
        scatter), one multiply (gate x routing weight already folded per scope), and one B GEMM
        that also adds the result (``addmm``) -- no casts, no host-built tensors.
        """
        selection = self.context.selection(self.frozen_domains)
        if not selection:
            return result
        operands = self._operands(selection, x.dtype, x.device)
        weights = None
        if self.context.mode == "routed":
            weights = self.context.routed_columns(operands.domains, operands.scale, x.dtype, x.device)  # [B, S]
        return frozen_forward(x, operands, self.layout, self.config.top_k, weights, result)

    def _operands(self, selection: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> FrozenOperands:
        """The selected stacks' GEMM operands in the compute dtype, built once per (selection, dtype).

        A cast or gathered copy is made once and kept (a view when nothing needs copying), so no
        forward casts the half-precision buffers again and autograd saves the cached tensors by
        reference instead of a fresh copy per call. Where ``B`` is copied anyway the LoRA scale is
        folded into it (exact for rsLoRA's default s = 4, a power of two); the stored buffers and
        the stack files keep the unscaled ``B``. Dropped when stacks change and on ``.to()``.
        """
        cast_per_call = not self.context.cache_frozen and self.frozen_in.dtype != dtype
        key = (selection, dtype, device, cast_per_call)
        operands = self._operand_cache.get(key)
        if operands is not None:
            return operands
        with torch.inference_mode(False):  # built under validation's inference mode, still usable in training
            operands = build_operands(
                self.frozen_in,
                self.frozen_Bt,
                selection,
                self.frozen_in.dtype if cast_per_call else dtype,
                device,
                self.config.scale,
                self.frozen_domains,
                fold=not cast_per_call,
            )
        operands = operands._replace(cast_per_call=cast_per_call)
        while len(self._operand_cache) >= _CACHED_SELECTIONS:
            self._operand_cache.pop(next(iter(self._operand_cache)))
        self._operand_cache[key] = operands
        return operands

    def _drop_operands(self) -> None:
        self._operand_cache.clear()
        self.context.stack_selection_cache.clear()

    def _apply(self, fn, recurse: bool = True):
        self._operand_cache.clear()  # .to()/.half()/...: rebuilt from the moved buffers on next use
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, frozen={self.num_frozen}, active={self.active_domain!r}"
