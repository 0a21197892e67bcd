"""Small, explicit configuration dataclasses.

Each field carries an attribute docstring: ``jsonargparse`` turns them into ``--help`` text,
so the CLI documents itself from here. Nothing in the package reads a module-level global.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class StackConfig:
    """Hyperparameters of one MoE-LoRA stack (the same for every stack of a run)."""

    experts: int = 4
    """Number of LoRA experts per projection (E)."""
    rank: int = 16
    """Rank of each expert (r)."""
    alpha: float = 16.0
    """LoRA alpha; the scale is ``alpha / sqrt(rank)`` with rsLoRA, else ``alpha / rank``."""
    rslora: bool = True
    """Use the rank-stabilised scale ``alpha / sqrt(rank)`` (4.0 for alpha=16, r=16)."""
    top_k: int = 2
    """Experts kept per token; the softmax runs over the kept logits only."""
    noise: bool = True
    """Noisy top-k gating while training: ``logits + softplus(W_n x) * eps``. Never in eval."""
    aux_coeff: float = 0.01
    """Weight of the summed load-balance losses in the total loss."""
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    """Names (last path component) of the linear projections that get stacks."""
    frozen_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Storage dtype of frozen stacks and of stack files (half precision saves memory and disk)."""
    detach_frozen_input: bool = False
    """Opt-in cheaper backward: stop the input gradient at the frozen stacks (the base path keeps it)."""

    def __post_init__(self) -> None:
        if self.experts < 1:
            raise ValueError(f"StackConfig.experts must be >= 1, got {self.experts}")
        if self.rank < 1:
            raise ValueError(f"StackConfig.rank must be >= 1, got {self.rank}")
        if not 1 <= self.top_k <= self.experts:
            raise ValueError(f"StackConfig.top_k must be in [1, experts={self.experts}], got {self.top_k}")
        if not self.target_modules:
            raise ValueError("StackConfig.target_modules must name at least one module")
        self.target_modules = list(self.target_modules)

    @property
    def scale(self) -> float:
        """The LoRA output scale ``s``."""
        return self.alpha / (self.rank**0.5 if self.rslora else self.rank)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StackConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)
