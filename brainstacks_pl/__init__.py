"""brainstacks_pl: continual multi-domain fine-tuning with frozen MoE-LoRA stacks, on Lightning.

Every public name is imported on first access, so that ``import brainstacks_pl`` (and
``brainstacks --help``) costs no torch, transformers or Lightning import.
"""

from importlib import import_module

_LAZY = {
    "StackConfig": "brainstacks_pl.config",
    "StackContext": "brainstacks_pl.layers.context",
    "MoELoRA": "brainstacks_pl.layers.moe_lora",
    "MoEOutput": "brainstacks_pl.layers.moe_lora",
    "StackedLinear": "brainstacks_pl.layers.stacked_linear",
    "BrainstacksModel": "brainstacks_pl.model",
    "inject_stacks": "brainstacks_pl.model",
    "load_base_model": "brainstacks_pl.model",
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


__all__ = list(_LAZY)
__version__ = "0.1.0"
