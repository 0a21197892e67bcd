r"""The stack format, declared once: which tensors a MoE-LoRA stack has, their names, shapes and rows.

Everything that creates, splits, saves, loads, freezes or checkpoints a stack reads it from
here (as PEFT declares ``adapter_layer_names``), so the layout can change in one place:

    in_proj  [E*r + 2E, d_in]   rows  A_1..A_E (E*r) | W_r (E) | W_n (E)
    B        [d_out, E*r]       columns e*r:(e+1)*r belong to expert e

A stack file keys them ``<layer>.in_proj`` and ``<layer>.B``. It keeps the ``W_n`` rows
(docs/design.md, "Stack format"): they are part of the function the stack was trained as,
and without them the stack could not be trained further; frozen stacks never read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from brainstacks_pl.config import StackConfig
from brainstacks_pl.errors import StackFileError

__all__ = ["TENSOR_NAMES", "StackLayout", "file_key", "layer_tensors", "file_shapes", "check_shapes", "is_active_key"]

TENSOR_NAMES = ("in_proj", "B")
"""The parameters of a stack (``MoELoRA`` attributes), in file order."""

ACTIVE_ATTRIBUTE = "active"
"""``StackedLinear``'s attribute holding the trainable stack: its parameters are ``...active.<name>``."""


@dataclass(frozen=True)
class StackLayout:
    """Rows and shapes of one layer's stack: ``d_in -> d_out`` with ``experts`` experts of rank ``rank``."""

    d_in: int
    d_out: int
    experts: int
    rank: int

    @classmethod
    def of(cls, d_in: int, d_out: int, config: StackConfig) -> StackLayout:
        return cls(d_in, d_out, config.experts, config.rank)

    @property
    def mid_width(self) -> int:
        """``E*r``: rows of ``A``, columns of ``B``, width of the mid activations."""
        return self.experts * self.rank

    @property
    def a(self) -> slice:
        """``in_proj`` rows of the stacked down-projections ``A_1..A_E``."""
        return slice(0, self.mid_width)

    @property
    def router(self) -> slice:
        """``in_proj`` rows of the router ``W_r``."""
        return slice(self.a.stop, self.a.stop + self.experts)

    @property
    def noise(self) -> slice:
        """``in_proj`` rows of the noise head ``W_n`` (read only while training)."""
        return slice(self.router.stop, self.router.stop + self.experts)

    @property
    def in_rows(self) -> int:
        """Rows of ``in_proj``: ``A | W_r | W_n``."""
        return self.noise.stop

    @property
    def frozen_rows(self) -> int:
        """Rows a frozen stack keeps, ``A | W_r`` (no noise once frozen)."""
        return self.router.stop

    @property
    def row_split(self) -> list[int]:
        """Sizes of ``A``, ``W_r``, ``W_n`` in ``in_proj``'s rows (for ``Tensor.split``)."""
        return [self.mid_width, self.experts, self.experts]

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        """Shape of each stack tensor, keyed by ``TENSOR_NAMES``."""
        return {"in_proj": (self.in_rows, self.d_in), "B": (self.d_out, self.mid_width)}


def file_key(layer: str, name: str) -> str:
    """The key of layer ``layer``'s tensor ``name`` in a stack file (``<layer>.<name>``)."""
    return f"{layer}.{name}"


def layer_tensors(tensors: Mapping[str, Tensor], layer: str) -> dict[str, Tensor]:
    """One layer's tensors of a stack file, keyed by ``TENSOR_NAMES``."""
    return {name: tensors[file_key(layer, name)] for name in TENSOR_NAMES}


def file_shapes(
    layer_shapes: Mapping[str, tuple[int, int] | list[int]], experts: int, rank: int
) -> dict[str, tuple[int, int]]:
    """Shape of every tensor of a stack file for layers ``{name: (d_in, d_out)}``."""
    return {
        file_key(layer, name): shape
        for layer, (d_in, d_out) in layer_shapes.items()
        for name, shape in StackLayout(d_in, d_out, experts, rank).shapes.items()
    }


def check_shapes(tensors: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]], where: str) -> None:
    """Refuse stack tensors that lack a name of ``shapes`` or have another shape (``StackFileError``).

    Called once per load, before anything is changed: a stack from another base model or
    ``StackConfig`` is refused whole, never appended to some layers and not others.
    """
    missing = [key for key in shapes if key not in tensors]
    if missing:
        raise StackFileError(
            f"{where}: lacks {len(missing)} tensors this model needs, e.g. {missing[:3]} "
            "(stack from another base model?)"
        )
    for key, shape in shapes.items():
        if tuple(tensors[key].shape) != tuple(shape):
            raise StackFileError(
                f"{where}: tensor '{key}' has shape {tuple(tensors[key].shape)}, this model needs {tuple(shape)} "
                "(stack from another base model or StackConfig?)"
            )


def is_active_key(key: str) -> bool:
    """Whether a ``state_dict`` key is a parameter of an active (trainable) stack.

    Lightning checkpoints keep only these: the base model is loaded from its source and the
    frozen stacks from their files, so a checkpoint holds what training changes and nothing else.
    """
    return key.split(".")[-2:] in ([ACTIVE_ATTRIBUTE, name] for name in TENSOR_NAMES)
