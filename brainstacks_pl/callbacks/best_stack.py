"""BestStackCallback: keep the best-validation snapshot of the active stack within a round.

The round's starting point is the first candidate: it is snapshotted before the first step,
so a loss that is NaN from the first validation on (a diverging learning rate) goes back to
it, never forward with NaN weights. A phase that has measured the starting point's
validation loss (an alignment phase: the SFT policy) passes it to ``start_from``: that loss
is then the one to beat, so a round none of whose evaluations beats it keeps its start.

A new best validation loss snapshots the active stack. A loss more than ``spike_threshold``
above the best (or a non-finite one) restores the snapshot and ends the round; so do
``patience`` evaluations without improvement. A training batch that the module skipped as
non-finite (``StackModule.last_step_skipped``) also goes back to the snapshot. When the round
ends after at least one validation, or with non-finite weights, the best snapshot is
restored, so the stack that gets frozen is the best one seen. The snapshot is part of the
callback state, hence of Lightning checkpoints: a resumed round keeps it.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

if TYPE_CHECKING:
    from brainstacks_pl.modules.stack_module import StackModule

log = logging.getLogger(__name__)

__all__ = ["BestStackCallback"]


class BestStackCallback(Callback):
    """Snapshot / restore the active stack by validation loss.

    Args:
        monitor: Logged validation metric to watch.
        spike_threshold: Absolute rise above the best loss that counts as a spike.
        patience: Evaluations without improvement before the round stops.
        min_delta: Smallest decrease that counts as an improvement.
    """

    def __init__(
        self, monitor: str = "val_loss", spike_threshold: float = 0.5, patience: int = 3, min_delta: float = 0.0
    ):
        self.monitor = monitor
        self.spike_threshold = spike_threshold
        self.patience = patience
        self.min_delta = min_delta
        self.start_loss: float | None = None
        self.reset()

    def reset(self) -> None:
        self.best: float = math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[float] = []
        self.bad_evals = 0
        self.stopped_reason: str | None = None
        self.restores = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.reset()  # each round starts afresh; a checkpoint restore (after setup) overrides this

    def start_from(self, val_loss: float) -> None:
        """The starting point's validation loss, measured before the next fit: a finite one
        becomes the best to beat (without it the starting point's best stays ``inf``)."""
        self.start_loss = val_loss

    def on_train_start(self, trainer: L.Trainer, pl_module: StackModule) -> None:
        if self.stopped_reason is not None:
            trainer.should_stop = True  # resumed from a checkpoint written after the round had stopped
        start, self.start_loss = self.start_loss, None
        if trainer.global_step > 0:
            return  # resumed: the checkpointed state stands
        measured = start is not None and math.isfinite(start) and start < self.best
        if measured:
            self.best = start
        if self.best_state is None or measured:
            self.snapshot(pl_module)  # the starting point: the candidate of last resort

    def snapshot(self, pl_module: L.LightningModule) -> None:
        self.best_state = {k: v.cpu() for k, v in pl_module.stacks.active_state_dict().items()}

    def restore(self, pl_module: L.LightningModule) -> None:
        if self.best_state is not None:
            pl_module.stacks.load_active_state_dict(self.best_state)
            self.restores += 1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        loss = float(trainer.callback_metrics[self.monitor])
        self.history.append(loss)
        if not math.isfinite(loss) or loss > self.best + self.spike_threshold:
            log.warning(
                "validation loss %.4f spiked above best %.4f: restoring the best snapshot and ending the round",
                loss,
                self.best,
            )
            self.restore(pl_module)
            self._stop(trainer, f"spike ({loss:.4f} > best {self.best:.4f} + {self.spike_threshold})")
        elif loss < self.best - self.min_delta:
            self.best, self.bad_evals = loss, 0
            self.snapshot(pl_module)
        else:
            self.bad_evals += 1
            if self.bad_evals >= self.patience:
                self._stop(trainer, f"patience ({self.patience} evaluations without improvement)")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: StackModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if pl_module.last_step_skipped:
            self.restore_best(pl_module)  # a non-finite loss: go back to the last good weights

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.restore_best(pl_module)

    def restore_best(self, pl_module: L.LightningModule) -> None:
        """Put the best snapshot back if a validation chose it or the weights went non-finite
        (a round without any validation keeps its trained, finite weights)."""
        finite = all(bool(torch.isfinite(v).all()) for v in pl_module.stacks.active_state_dict().values())
        if self.history or not finite:
            self.restore(pl_module)

    def record_fields(self) -> dict[str, Any]:
        """What a frozen stack's ``StackRecord`` keeps of this round: the best validation loss
        (None when no finite one was seen) and every validation loss, in order. Whoever writes
        the record asks here, so the callback's attributes stay its own."""
        return {"best_val_loss": self.best if math.isfinite(self.best) else None, "val_losses": list(self.history)}

    def _stop(self, trainer: L.Trainer, reason: str) -> None:
        self.stopped_reason = reason
        trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_state": self.best_state,
            "history": list(self.history),
            "bad_evals": self.bad_evals,
            "stopped_reason": self.stopped_reason,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict["best"]
        self.best_state = state_dict["best_state"]
        self.history = list(state_dict["history"])
        self.bad_evals = state_dict["bad_evals"]
        self.stopped_reason = state_dict["stopped_reason"]
