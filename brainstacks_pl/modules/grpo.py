"""GRPOModule: Group Relative Policy Optimization of one domain's new stack (Shao et al. 2024).

Per training batch of N prompts:

1. sample G completions per prompt with the current policy (active stack on, temperature
   sampling with the KV cache, ``generation.generate``);
2. score them with the configured reward callables (``rewards.py``), weighted sum per sample;
3. standardise rewards within each prompt's group (``group_advantages``);
4. take the per-token log-probabilities of the sampled tokens under the sampling policy
   (``old``) and, with ``kl_coeff > 0``, under the reference (``stacks.active_off()``);
5. run ``updates_per_batch`` optimizer steps on the clipped surrogate ``grpo_loss`` (+ the
   load-balance aux loss), each with gradient-norm clipping (``max_grad_norm``).

This needs several optimizer steps per batch, so the module uses Lightning's manual
optimisation: ``trainer.global_step`` counts optimizer steps (``max_steps`` = updates), and
``trainer.gradient_clip_val`` must stay unset (clipping is ``max_grad_norm`` here). The active
stack runs without gating noise during the phase (``stacks.eval()`` inside the step): the
importance ratio compares the same function at sampling and update time, and noise would make
it differ from 1 at identical weights.

Bad input: a reward function that raises is an error naming it (``on_reward_error: raise``) or
skips the batch with a warning (``skip``); one returning the wrong number of values is always
an error; a non-finite reward drops that sample's group from the update (counted in
``train/skipped_groups``). A non-finite loss or gradient skips the optimizer step.

Sampling and log-probabilities live in ``grpo_rollout.py``, the reward contract and scoring in
``grpo_rewards.py``; this module is the optimisation loop and validation.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from torch import Tensor

from brainstacks_pl.losses import group_advantages, grpo_loss
from brainstacks_pl.modules.alignment import AlignmentModule
from brainstacks_pl.modules.grpo_rewards import RewardError, RewardScoring, RewardSpec, load_reward
from brainstacks_pl.modules.grpo_rollout import Rollout
from brainstacks_pl.modules.serving import prompt_rows
from brainstacks_pl.seeds import derive_seed

log = logging.getLogger(__name__)

__all__ = ["GRPOModule", "RewardError", "RewardSpec", "load_reward"]


class GRPOModule(Rollout, RewardScoring, AlignmentModule):
    """GRPO on the active stack of ``domain``; the KL reference is the stack switched off.

    Args:
        domain: The domain whose next stack this phase trains.
        rewards: Reward terms (import path, weight, bound kwargs); their weighted sum is the reward.
        group_size: Completions sampled per prompt (G); advantages are relative within a group.
        max_new_tokens: Longest completion sampled in training.
        temperature: Sampling temperature in training (validation decodes greedily).
        clip_eps: PPO clip range of the importance ratio.
        kl_coeff: Weight of the k3 KL penalty to the reference policy (0 skips the reference forward).
        updates_per_batch: Optimizer steps on each generated batch (mu in the GRPO paper).
        max_grad_norm: Gradient-norm clipping of every update (None: off).
        advantage_eps: Added to the group std before dividing.
        val_max_new_tokens: Longest greedy completion in validation (None: ``max_new_tokens``).
        on_reward_error: ``raise`` stops training with the function's name; ``skip`` skips the batch.
        **kwargs: See ``AlignmentModule`` and ``StackModule`` (model, optimizer, schedule, seed, ...).
    """

    phase = "grpo"

    def __init__(
        self,
        domain: str,
        rewards: list[RewardSpec] | None = None,
        group_size: int = 4,
        max_new_tokens: int = 48,
        temperature: float = 1.0,
        clip_eps: float = 0.2,
        kl_coeff: float = 0.04,
        updates_per_batch: int = 2,
        max_grad_norm: float | None = 1.0,
        advantage_eps: float = 1e-4,
        val_max_new_tokens: int | None = None,
        on_reward_error: Literal["raise", "skip"] = "raise",
        **kwargs: Any,
    ):
        super().__init__(domain, **kwargs)
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 (advantages are relative within a group), got {group_size}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (validation is greedy already), got {temperature}")
        if updates_per_batch < 1 or max_new_tokens < 1:
            raise ValueError("updates_per_batch and max_new_tokens must be >= 1")
        specs = [
            r if isinstance(r, RewardSpec) else RewardSpec(**r)
            for r in (rewards or [RewardSpec("brainstacks_pl.rewards.math_exact_match")])
        ]
        self.reward_specs = specs
        self.reward_functions = [load_reward(s) for s in specs]  # import errors surface at config time
        self.group_size, self.max_new_tokens, self.temperature = group_size, max_new_tokens, temperature
        self.clip_eps, self.kl_coeff, self.updates_per_batch = clip_eps, kl_coeff, updates_per_batch
        self.max_grad_norm, self.advantage_eps = max_grad_norm, advantage_eps
        self.val_max_new_tokens = val_max_new_tokens or max_new_tokens
        self.on_reward_error = on_reward_error
        self.automatic_optimization = False
        self.skipped_groups = 0

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self) -> None:
        self.stacks.context.noise_generator = None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        self.last_step_skipped = False
        group, prompt_ids = self.group_size, batch["input_ids"]
        # Seeded by (seed, update, rank): reruns replay the same groups; ranks draw independently.
        generator = torch.Generator(device=self.device).manual_seed(
            derive_seed(self.seed, "rollout", self.global_step, self.global_rank)
        )
        self.stacks.eval()  # no gating noise: the ratio must be 1 at the sampling weights
        # Every forward of the step (sampling, old / reference / new log-probs) runs as served.
        with self.served(prompt_rows(prompt_ids, batch["attention_mask"]), repeat=group):
            return self._grpo_step(batch, optimizer, scheduler, group, prompt_ids, generator)

    def _grpo_step(self, batch, optimizer, scheduler, group: int, prompt_ids: Tensor, generator) -> Tensor | None:
        try:
            with torch.no_grad():
                sequences, completion_mask = self.sample(
                    prompt_ids.repeat_interleave(group, 0),
                    batch["attention_mask"].repeat_interleave(group, 0),
                    self.max_new_tokens,
                    self.temperature,
                    generator,
                )
                prompt_len = prompt_ids.shape[1]
                attention = torch.cat([batch["attention_mask"].repeat_interleave(group, 0), completion_mask], 1)
                completions = self.decode(sequences, completion_mask, prompt_len)
                prompts = [p for p in batch["prompts"] for _ in range(group)]
                columns = {k: [v for v in values for _ in range(group)] for k, values in batch["columns"].items()}
                rewards = self._score_on_every_rank(prompts, completions, columns)
                if rewards is None:
                    return None
                rewards = rewards.view(-1, group)  # [N, G]
                bad_groups = ~torch.isfinite(rewards).all(1)  # [N]
                if bool(bad_groups.any()):
                    self.skipped_groups += int(bad_groups.sum())
                    log.warning(
                        "%d group(s) with a non-finite reward left out of step %d",
                        int(bad_groups.sum()),
                        self.global_step,
                    )
                    rewards = torch.where(bad_groups[:, None], torch.zeros_like(rewards), rewards)
                    completion_mask = (
                        completion_mask * (~bad_groups).repeat_interleave(group).to(completion_mask.device)[:, None]
                    )
                advantages = group_advantages(rewards.float(), self.advantage_eps).view(-1).to(self.device)  # [N*G]
                old_logps, _ = self.token_logps(sequences, attention, prompt_len)
                ref_logps = None
                if self.kl_coeff:
                    with self.stacks.active_off():
                        ref_logps, _ = self.token_logps(sequences, attention, prompt_len)
            # The bar shows the mean reward, sampled here and greedy in validation (val/reward):
            # GRPO's loss is a surrogate whose value says nothing about progress.
            reward = rewards[~bad_groups].mean().float() if bool((~bad_groups).any()) else torch.tensor(float("nan"))
            self.log(
                "train/reward", reward, prog_bar=True, on_step=True, on_epoch=False, batch_size=prompt_ids.shape[0]
            )
            self.log_dict(
                {
                    "train/reward_std": rewards.std(1).mean().float(),
                    "train/completion_tokens": completion_mask.sum(1).float().mean(),
                    "train/skipped_groups": float(self.skipped_groups),
                },
                on_step=True,
                on_epoch=False,
                batch_size=prompt_ids.shape[0],
            )
            last, skipped = None, self.nonfinite_steps
            for _ in range(self.updates_per_batch):
                loss = self._update(
                    optimizer,
                    scheduler,
                    sequences,
                    attention,
                    prompt_len,
                    old_logps,
                    ref_logps,
                    advantages,
                    completion_mask,
                )
                last = loss if loss is not None else last
            # A batch none of whose updates could be taken sends BestStackCallback back to its snapshot.
            self.last_step_skipped = self.nonfinite_steps - skipped == self.updates_per_batch
            return last
        finally:
            self.stacks.train()

    def _update(
        self, optimizer, scheduler, sequences, attention, prompt_len, old_logps, ref_logps, advantages, completion_mask
    ) -> Tensor | None:
        logps, aux = self.token_logps(sequences, attention, prompt_len)
        out = grpo_loss(logps, old_logps, ref_logps, advantages, completion_mask, self.clip_eps, self.kl_coeff)
        loss = out.loss + self.aux_term(aux)
        # Under DDP every rank must take the same branch: a rank that skipped backward would
        # leave the others waiting in the gradient all-reduce (skip_if_nonfinite agrees it).
        if self.skip_if_nonfinite(loss, what="GRPO loss"):
            return None
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.max_grad_norm:
            self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
        grads = [p.grad for p in self.stacks.parameters() if p.grad is not None]
        if self.skip_if_nonfinite(*grads, what="GRPO gradient"):
            optimizer.zero_grad(set_to_none=True)
            return None
        optimizer.step()
        scheduler.step()
        self.log_dict(
            {
                "train/grpo_loss": out.loss.detach(),
                "train/kl": out.kl,
                "train/clip_fraction": out.clip_fraction,
                "train/aux_loss": aux.detach(),
            },
            on_step=True,
            on_epoch=False,
        )
        self.log("train_loss", out.loss.detach())  # the GRPO loss; with aux_coeff x load balance: train_total_loss
        self.log("train_total_loss", loss.detach())
        return loss.detach()

    # ------------------------------------------------------------------ validation
    def _greedy_rewards(self, batch: dict[str, Any]) -> Tensor | None:
        with self.served(prompt_rows(batch["input_ids"], batch["attention_mask"])):
            sequences, completion_mask = self.sample(
                batch["input_ids"], batch["attention_mask"], self.val_max_new_tokens, None
            )
        completions = self.decode(sequences, completion_mask, batch["input_ids"].shape[1])
        # Agreed across ranks like training: a batch skipped on one rank (on_reward_error: skip)
        # is skipped on all, so no rank waits alone in the epoch-end sync of val/reward.
        return self._score_on_every_rank(list(batch["prompts"]), completions, dict(batch["columns"]), "val")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        rewards = self._greedy_rewards(batch)
        if rewards is None:
            return
        n = batch["input_ids"].shape[0]
        finite = torch.isfinite(rewards)
        reward = rewards[finite].mean().float() if bool(finite.any()) else torch.tensor(float("nan"))
        self.log("val/reward", reward, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        # BestStackCallback watches val_loss: lower is better, so the validation objective is -reward.
        self.log("val_loss", -reward, on_epoch=True, batch_size=n, sync_dist=True)

    @torch.no_grad()
    def evaluate(self, dataloader) -> dict[str, float]:
        """Greedy held-out mean reward per term and in total (``val_loss`` = -total); a
        non-finite reward value counts as 0 here."""
        was_training = self.stacks.training
        self.stacks.eval()
        sums: dict[str, float] = {}
        count = 0
        try:
            for batch in dataloader:
                batch = {
                    **batch,
                    "input_ids": batch["input_ids"].to(self.device),
                    "attention_mask": batch["attention_mask"].to(self.device),
                }
                with self.served(prompt_rows(batch["input_ids"], batch["attention_mask"])):
                    sequences, completion_mask = self.sample(
                        batch["input_ids"], batch["attention_mask"], self.val_max_new_tokens, None
                    )
                completions = self.decode(sequences, completion_mask, batch["input_ids"].shape[1])
                terms = self.reward_terms(list(batch["prompts"]), completions, dict(batch["columns"]))
                if terms is None:
                    continue
                total = torch.zeros(len(completions), dtype=torch.float64)
                for spec, term in zip(self.reward_specs, terms):
                    name = spec.function.rpartition(".")[2]
                    sums[name] = sums.get(name, 0.0) + float(
                        torch.nan_to_num(term, nan=0.0, posinf=0.0, neginf=0.0).sum()
                    )
                    total = total + spec.weight * term
                sums["reward"] = sums.get("reward", 0.0) + float(
                    torch.nan_to_num(total, nan=0.0, posinf=0.0, neginf=0.0).sum()
                )
                count += len(completions)
        finally:
            self.stacks.train(was_training)
        if count == 0:
            raise ValueError("the prompt validation set is empty; raise val_fraction")
        metrics = {k: v / count for k, v in sums.items()}
        metrics["val_loss"] = -metrics["reward"]
        return metrics
