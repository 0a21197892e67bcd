"""StackModule: what every stack-training phase shares (SFT, DPO, GRPO).

Each of these phases trains exactly one active stack of a ``BrainstacksModel``
(``self.stacks``: frozen base, frozen earlier stacks, one trainable stack). Shared here:

- the base-model and optimisation options (``optim.stack_optimizers``: the active stack's
  trainable parameters, linear warmup, then constant or cosine);
- checkpoints that hold only the active stack, loaded non-strictly: the base is rebuilt from
  ``model_name_or_path`` and the frozen stacks from their files;
- the non-finite rule: a step whose loss (or gradient) is non-finite on any rank is skipped
  on every rank alike and counted in ``nonfinite_steps``; ``last_step_skipped`` tells
  ``BestStackCallback`` to go back to its last good snapshot.

The subclasses keep what differs: how the model is built (``StackSFTModule`` from its own
options, ``AlignmentModule`` from a run's manifest), the loss, and how a phase runs.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from brainstacks_pl.config import StackConfig
from brainstacks_pl.layers.stack_format import is_active_key
from brainstacks_pl.model import BrainstacksModel
from brainstacks_pl.optim import stack_optimizers

log = logging.getLogger(__name__)

__all__ = ["StackModule"]


class StackModule(L.LightningModule):
    """Base of the stack-training modules (see the module docstring).

    With automatic optimisation (SFT, DPO) ``training_step`` returns
    ``self.skip_step()`` when ``skip_if_nonfinite(loss, ...)`` says so: a loss with exactly
    zero gradient for every trainable parameter, built from the parameters, not from the NaN
    activations. Every rank then runs the same backward (DDP's gradient all-reduce pairs up;
    Lightning refuses ``None`` from ``training_step`` under distributed training) and
    ``optimizer_step`` takes no step, so the weights, the optimizer state and ``global_step``
    never see the bad batch. With manual optimisation (GRPO) the step just skips its update.

    Args:
        model_name_or_path: The base model (see the subclass).
        quantization: ``nf4`` loads the base in 4-bit NF4 (QLoRA); ``None`` keeps it dense.
        dtype: Base weights / compute dtype (``float32``, ``bfloat16``, ``float16``).
        optimizer: Optimizer for the active stack (e.g. ``torch.optim.AdamW`` or
            ``bitsandbytes.optim.AdamW8bit``); receives only the trainable parameters.
        warmup_steps: Linear warmup steps of the learning-rate schedule.
        scheduler: ``cosine`` decays to ``min_lr_ratio`` x lr after warmup; ``constant`` keeps it.
        min_lr_ratio: Final learning rate as a fraction of the peak (cosine only).
        seed: Seed of the stack initialisation and of the phase's own randomness (SFT's
            per-epoch gating noise, GRPO's sampling).
    """

    last_step_skipped: bool = False
    """The last training batch took no optimizer step because of a non-finite value (on any
    rank): ``BestStackCallback`` then restores its last good snapshot."""

    def __init__(
        self,
        model_name_or_path: str | None,
        quantization: Literal["nf4"] | None = None,
        dtype: str = "float32",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_steps: int = 10,
        scheduler: Literal["cosine", "constant"] = "cosine",
        min_lr_ratio: float = 0.1,
        seed: int = 0,
    ):
        super().__init__()
        self.model_name_or_path = model_name_or_path
        self.quantization = quantization
        self.dtype_name = dtype
        self.optimizer_factory = optimizer
        self.warmup_steps = warmup_steps
        self.scheduler_name = scheduler
        self.min_lr_ratio = min_lr_ratio
        self.seed = seed
        self.stacks: BrainstacksModel | None = None
        self.stack_config: StackConfig | None = None
        self.strict_loading = False  # checkpoints hold only the active stack
        self.nonfinite_steps = 0

    @property
    def stack_tag(self) -> str:
        """``<domain>/stack<round>`` of the active stack (``frozen`` when there is none)."""
        info = self.stacks.active_info if self.stacks is not None else None
        return f"{info.domain}/stack{info.round}" if info else "frozen"

    def aux_term(self, aux_loss: Tensor) -> Tensor:
        """The load-balance term added to every phase's loss."""
        return self.stack_config.aux_coeff * aux_loss

    # ------------------------------------------------------------------ non-finite steps
    def skip_if_nonfinite(self, *values: Tensor, what: str) -> bool:
        """Whether any of ``values`` is non-finite on any rank (one all-reduce of a flag, so
        every rank gets the same answer); a skipped step is counted and logged."""
        finite = all(bool(torch.isfinite(v).all()) for v in values)
        if self._trainer is not None:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        self.last_step_skipped = not finite
        if not finite:
            self.nonfinite_steps += 1
            log.warning("non-finite %s at step %d of %s; step skipped", what, self.global_step, self.stack_tag)
        return not finite

    def skip_step(self) -> Tensor:
        """A loss whose gradient is exactly zero for every trainable parameter."""
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.stack([p.sum() for p in params]).sum() * 0.0

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        loss = optimizer_closure()  # training_step + backward, on every rank
        if self.last_step_skipped:
            return
        optimizer.step(closure=lambda: loss)

    # ------------------------------------------------------------------ optimisation and checkpoints
    def configure_optimizers(self) -> Any:
        return stack_optimizers(
            self.stacks.parameters(),
            self.optimizer_factory,
            self.trainer.estimated_stepping_batches,
            self.warmup_steps,
            self.scheduler_name,
            self.min_lr_ratio,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if is_active_key(k)}
