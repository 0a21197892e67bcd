"""ResidualBoosting: end-of-round freezing and the decision to boost once more.

Each boosting round is one ``Trainer.fit`` on the same module (see docs/design.md). When a
round's fit ends, this callback freezes the active stack (``BestStackCallback`` has already
put the best snapshot back), measures the domain's validation loss with it frozen, writes
the stack file and its manifest record, and ``wants_another_round`` tells the curriculum
driver whether the domain gets another stack: not after ``max_rounds``, and not when the
round improved validation loss by less than ``min_loss_delta``.
"""

from __future__ import annotations

import logging
import time

import lightning as L
from lightning.pytorch.callbacks import Callback

from brainstacks_pl.callbacks.best_stack import BestStackCallback
from brainstacks_pl.errors import UserError
from brainstacks_pl.run import RunDirectory
from brainstacks_pl.storage import StackRecord
from brainstacks_pl.validation import evaluate_loss

log = logging.getLogger(__name__)

__all__ = ["ResidualBoosting"]


class ResidualBoosting(Callback):
    """Freeze, save and decide on the next boosting round.

    Args:
        max_rounds: Most stacks trained per domain.
        min_loss_delta: A round that lowers validation loss by less than this ends the domain.
    """

    def __init__(self, max_rounds: int = 3, min_loss_delta: float = 0.002):
        if max_rounds < 1:
            raise ValueError(f"boosting.max_rounds must be >= 1, got {max_rounds}")
        self.max_rounds = max_rounds
        self.min_loss_delta = min_loss_delta
        self.run: RunDirectory | None = None
        self.best_stack: BestStackCallback | None = None
        self.start_val_loss: float | None = None
        self._started = 0.0

    def attach(self, run: RunDirectory, best_stack: BestStackCallback | None = None) -> None:
        """What the curriculum driver shares with this callback (the CLI builds it from config, so
        not through the constructor): the run directory whose manifest records the frozen stacks,
        and the phase's ``BestStackCallback`` (None: the phase has none), whose best snapshot is
        what gets frozen and whose validation history goes into the record."""
        self.run, self.best_stack = run, best_stack

    def wants_another_round(self, records: list[StackRecord]) -> bool:
        if not records:
            return True
        if len(records) >= self.max_rounds:
            return False
        last = records[-1]
        improvement = last.start_val_loss - last.loss_at_freeze
        if improvement < self.min_loss_delta:
            log.info(
                "domain %s: round %d improved validation loss by %.4f < %.4f, boosting stops",
                last.domain,
                last.round,
                improvement,
                self.min_loss_delta,
            )
            return False
        return True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:

        self._started = time.monotonic()
        stacks = pl_module.stacks
        domain = stacks.active_info.domain
        earlier = self.run.records(domain) if self.run is not None else []
        if earlier:  # the previous round measured it right after freezing
            self.start_val_loss = earlier[-1].loss_at_freeze
        else:  # first round: every frozen stack (earlier domains), without the active one
            with stacks.isolated([d for d in stacks.domains if d != domain]):
                self.start_val_loss = evaluate_loss(stacks, trainer.datamodule.val_dataloader(), pl_module.device)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:

        if self.run is None:
            raise RuntimeError(
                "ResidualBoosting runs inside the curriculum driver (brainstacks fit), which attaches the run directory"
            )
        stacks = pl_module.stacks
        info = stacks.active_info
        best = self.best_stack
        if best is not None:
            # Normally done by BestStackCallback.on_train_end, but a round resumed from the checkpoint
            # of its last epoch skips the fit loop (no on_train_end): restore here so the best is frozen.
            best.restore_best(pl_module)
        if trainer.global_step == 0:
            raise UserError(
                f"{info.domain} round {info.round} took no training step (no training batches); nothing was frozen"
            )
        tensors = stacks.freeze_stack()
        loss_at_freeze = evaluate_loss(stacks, trainer.datamodule.val_dataloader(), pl_module.device)
        record = StackRecord(
            file="",
            sha256="",
            domain=info.domain,
            round=info.round,
            start_val_loss=self.start_val_loss,
            loss_at_freeze=loss_at_freeze,
            train_seconds=round(time.monotonic() - self._started, 3),
            steps=trainer.global_step,
            **(best.record_fields() if best is not None else {}),
        )
        self.run.write_stack(tensors, record)
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"round/loss_at_freeze/{info.domain}": loss_at_freeze}, step=info.round)
