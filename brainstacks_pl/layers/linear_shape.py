"""Which base layers ``StackedLinear`` can wrap, and their ``(d_in, d_out)``.

One dispatcher per supported layer type; kept apart so supporting another base layer means
adding one function here, without reading the stacked forward.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["UnsupportedLayerError", "linear_shape"]


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
