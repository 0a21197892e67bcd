"""DPOModule: Direct Preference Optimization of one domain's new stack (Rafailov et al. 2023).

    L = dpo_loss(pi(chosen), pi(rejected), ref(chosen), ref(rejected), beta, label_smoothing)
        + aux_coeff * sum over layers of the load-balance losses

``pi`` is the model with the new active stack on, ``ref`` the *same* model with it switched off
(``stacks.active_off()``, under ``no_grad``): the base plus every frozen stack, including the
domain's earlier SFT stacks. A new stack has B = 0, so at step 0 policy == reference and the
loss is exactly log 2. Each batch holds B chosen rows then B rejected rows: one forward each
for policy and reference. ``val_loss`` (watched by ``BestStackCallback``) is the held-out DPO
loss; a non-finite training loss skips the step (the weights never see it).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from brainstacks_pl.losses import IGNORE_INDEX, dpo_loss, per_sample_lm_loss
from brainstacks_pl.modules.alignment import AlignmentModule
from brainstacks_pl.modules.serving import prompt_rows

log = logging.getLogger(__name__)

__all__ = ["DPOModule", "sequence_logps"]


def sequence_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """Summed log-probability of the labelled (response) tokens of each row, [B]."""
    sums, _ = per_sample_lm_loss(logits, labels)
    return -sums


class DPOModule(AlignmentModule):
    """Sigmoid DPO on the active stack of ``domain``; the reference is the stack switched off.

    Args:
        domain: The domain whose next stack this phase trains.
        beta: DPO temperature: how far (in log-ratio units) the policy may move from the
            reference before the loss saturates (0.1 in the DPO paper).
        label_smoothing: Conservative DPO (cDPO): the assumed probability that a preference
            label is flipped; 0 is plain DPO.
        **kwargs: See ``AlignmentModule`` and ``StackModule`` (model, optimizer, schedule, seed, ...).
    """

    phase = "dpo"

    def __init__(self, domain: str, beta: float = 0.1, label_smoothing: float = 0.0, **kwargs: Any):
        super().__init__(domain, **kwargs)
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.beta = beta
        self.label_smoothing = label_smoothing

    # ------------------------------------------------------------------ steps
    def _forward_pairs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]  # [2B, L]
        half = ids.shape[0] // 2
        prompts = prompt_rows(
            ids[:half], (labels[:half] == IGNORE_INDEX) & mask[:half].bool()
        )  # chosen half: bos + prompt
        with self.served(prompts, tile=2):  # rows: chosen then rejected, same prompts
            out = self.stacks(ids, mask)
            policy = sequence_logps(out.logits, labels)  # [2B]
            with torch.no_grad(), self.stacks.active_off():
                reference = sequence_logps(self.stacks(ids, mask).logits, labels)  # [2B]
        loss, chosen, rejected = dpo_loss(
            policy[:half], policy[half:], reference[:half], reference[half:], self.beta, self.label_smoothing
        )
        return {
            "dpo_loss": loss,
            "aux_loss": out.aux_loss,
            "chosen": chosen,  # [B] implicit rewards beta * (pi - ref)
            "rejected": rejected,
            "policy_chosen": policy[:half].detach(),
            "policy_rejected": policy[half:].detach(),
        }

    def _log_step(self, stage: str, out: dict[str, Tensor], batch_size: int) -> None:
        on_step = stage == "train"
        margins = out["chosen"] - out["rejected"]
        metrics = {
            f"{stage}/dpo_loss": out["dpo_loss"],
            f"{stage}/aux_loss": out["aux_loss"],
            f"{stage}/rewards/chosen": out["chosen"].mean(),
            f"{stage}/rewards/rejected": out["rejected"].mean(),
            f"{stage}/rewards/margins": margins.mean(),
            f"{stage}/rewards/accuracy": (margins > 0).float().mean(),
            f"{stage}/likelihood_accuracy": (out["policy_chosen"] > out["policy_rejected"]).float().mean(),
        }
        self.log_dict(metrics, on_step=on_step, on_epoch=not on_step, batch_size=batch_size, sync_dist=not on_step)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        out = self._forward_pairs(batch)
        loss = out["dpo_loss"] + self.aux_term(out["aux_loss"])
        if self.skip_if_nonfinite(loss, what="DPO loss"):  # every rank alike; BestStackCallback restores
            return self.skip_step()
        self._log_step("train", out, batch["input_ids"].shape[0] // 2)
        # train_loss on the bar is the DPO loss, like val_loss beside it; the optimised sum is train_total_loss.
        self.log("train_loss", out["dpo_loss"], prog_bar=True)
        self.log("train_total_loss", loss)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self._forward_pairs(batch)
        self._log_step("val", out, batch["input_ids"].shape[0] // 2)
        self.log(
            "val_loss",
            out["dpo_loss"],
            on_epoch=True,
            prog_bar=True,
            batch_size=batch["input_ids"].shape[0] // 2,
            sync_dist=True,
        )
        return out["dpo_loss"]

    # ------------------------------------------------------------------ held-out summary
    @torch.no_grad()
    def evaluate(self, dataloader) -> dict[str, float]:
        """Held-out DPO loss, implicit-reward accuracy / margin, and likelihood accuracy
        (the policy gives the chosen answer a higher summed log-probability than the rejected
        one: comparable before training, when the implicit rewards are all zero)."""
        was_training = self.stacks.training
        self.stacks.eval()
        totals = {"val_loss": 0.0, "reward_accuracy": 0.0, "margin": 0.0, "likelihood_accuracy": 0.0}
        count = 0
        try:
            for batch in dataloader:
                batch = {k: v.to(self.device) for k, v in batch.items()}
                out = self._forward_pairs(batch)
                n = batch["input_ids"].shape[0] // 2
                margins = out["chosen"] - out["rejected"]
                totals["val_loss"] += float(out["dpo_loss"]) * n
                totals["reward_accuracy"] += float((margins > 0).float().sum())
                totals["margin"] += float(margins.sum())
                totals["likelihood_accuracy"] += float((out["policy_chosen"] > out["policy_rejected"]).float().sum())
                count += n
        finally:
            self.stacks.train(was_training)
        if count == 0:
            raise ValueError("the preference validation set is empty; raise val_fraction")
        return {k: v / count for k, v in totals.items()}
