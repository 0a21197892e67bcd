"""brainstacks_pl: continual multi-domain fine-tuning with frozen MoE-LoRA stacks, on Lightning.

The core (layers, model, config) imports eagerly; the Lightning pieces are imported on first
access so that ``import brainstacks_pl`` stays light for inference-only users.
"""

from importlib import import_module

from brainstacks_pl.config import StackConfig
from brainstacks_pl.layers.context import StackContext
from brainstacks_pl.layers.moe_lora import MoELoRA, MoEOutput
from brainstacks_pl.layers.stacked_linear import StackedLinear
from brainstacks_pl.model import BrainstacksModel, inject_stacks, load_base_model

_LAZY = {
    "StackSFTModule": "brainstacks_pl.modules.sft",
    "RouterModule": "brainstacks_pl.modules.router",
    "DPOModule": "brainstacks_pl.modules.dpo",
    "GRPOModule": "brainstacks_pl.modules.grpo",
    "BestStackCallback": "brainstacks_pl.callbacks.best_stack",
    "ResidualBoosting": "brainstacks_pl.callbacks.boosting",
    "NullSpaceProjection": "brainstacks_pl.callbacks.nullspace",
    "ForgettingMatrix": "brainstacks_pl.callbacks.forgetting",
    "ThroughputRecorder": "brainstacks_pl.callbacks.throughput",
    "CurriculumDataModule": "brainstacks_pl.data.curriculum",
    "DomainConfig": "brainstacks_pl.data.curriculum",
    "MetaRouter": "brainstacks_pl.layers.router",
    "RoutedGenerator": "brainstacks_pl.inference",
    "cli_main": "brainstacks_pl.cli",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'brainstacks_pl' has no attribute {name!r}")


__all__ = [
    "BrainstacksModel",
    "MoELoRA",
    "MoEOutput",
    "StackConfig",
    "StackContext",
    "StackedLinear",
    "inject_stacks",
    "load_base_model",
    *_LAZY,
]
__version__ = "0.1.0"
