"""brainstacks_pl: continual multi-domain fine-tuning with frozen MoE-LoRA stacks, on Lightning."""

from brainstacks_pl.config import StackConfig
from brainstacks_pl.layers.context import StackContext
from brainstacks_pl.layers.moe_lora import MoELoRA, MoEOutput
from brainstacks_pl.layers.stacked_linear import StackedLinear
from brainstacks_pl.model import BrainstacksModel, inject_stacks, load_base_model

__all__ = [
    "BrainstacksModel",
    "MoELoRA",
    "MoEOutput",
    "StackConfig",
    "StackContext",
    "StackedLinear",
    "inject_stacks",
    "load_base_model",
]
__version__ = "0.1.0"
