"""StackSFTModule: supervised fine-tuning of the active stack of the current domain.

The LightningModule owns the ``BrainstacksModel`` (frozen base + stacks). The curriculum
driver adds a stack, runs one ``Trainer.fit`` per boosting round on this same module and
freezes the stack between fits, so every fit sees exactly one trainable stack. Checkpoints
hold only that stack's tensors: the base is rebuilt from ``model_name_or_path`` and the
frozen stacks from their files.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import Tensor

from brainstacks_pl.config import StackConfig
from brainstacks_pl.losses import causal_lm_loss
from brainstacks_pl.model import BrainstacksModel
from brainstacks_pl.modules.stack_module import StackModule
from brainstacks_pl.phase import PhaseContext
from brainstacks_pl.seeds import derive_seed
from brainstacks_pl.sharding import data_parallel_mesh, shard_stacks
from brainstacks_pl.validation import evaluate_loss

log = logging.getLogger(__name__)

__all__ = ["StackSFTModule", "evaluate_loss"]


class StackSFTModule(StackModule):
    """Causal-LM loss on response tokens + ``aux_coeff`` x the summed load-balance losses.

    Args:
        model_name_or_path: Hugging Face model id or local ``save_pretrained`` directory
            (``brainstacks-demo`` is the bundled tiny base).
        stack: MoE-LoRA hyperparameters shared by every stack of the run.
        domains: Domain names in curriculum order (linked from the data module by the CLI).
        log_expert_utilisation_every: Log per-expert utilisation every N training steps (0 = never).
        **kwargs: See ``StackModule`` (quantization, dtype, optimizer, schedule, seed).
    """

    phase: ClassVar[str] = "sft"
    """The phase's name (its TensorBoard run is ``tensorboard/sft``)."""

    def __init__(
        self,
        model_name_or_path: str = "brainstacks-demo",
        stack: StackConfig | None = None,
        domains: list[str] | None = None,
        log_expert_utilisation_every: int = 10,
        **kwargs: Any,
    ):
        super().__init__(model_name_or_path, **kwargs)
        self.stack_config = stack or StackConfig()
        self.domain_names = list(domains or [])
        self.log_expert_utilisation_every = log_expert_utilisation_every

    # ------------------------------------------------------------------ model
    def build(self) -> BrainstacksModel:
        """Load the base and inject the stack layers once (idempotent)."""
        if self.stacks is None:
            if not self.domain_names:
                raise ValueError("StackSFTModule needs the curriculum's domain names (model.domains)")
            self.stacks = BrainstacksModel.from_pretrained(
                self.model_name_or_path,
                self.stack_config,
                self.domain_names,
                quantization=self.quantization,
                dtype=self.dtype_name,
            )
        return self.stacks

    def configure_model(self) -> None:
        # Lightning calls this at the start of every round's fit. Under ModelParallelStrategy
        # (FSDP2) the device mesh is set: shard the base once and each new stack as it comes.
        self.build()
        if self._trainer is not None and isinstance(self._trainer.strategy, FSDPStrategy):
            raise ValueError(
                "FSDPStrategy (FSDP1) wraps the model once, so the stack each later round adds would never be "
                "sharded or synchronised; use lightning.pytorch.strategies.ModelParallelStrategy (FSDP2), "
                "as configs/fsdp_demo.yaml and configs/qlora_fsdp.yaml do (docs/scaling.md)"
            )
        if self._device_mesh is not None:
            shard_stacks(self.stacks, data_parallel_mesh(self._device_mesh))

    # ------------------------------------------------------------------ steps
    def _common_step(self, batch: dict[str, Tensor], stage: str) -> tuple[Tensor, Tensor]:
        """(the optimised loss: task + ``aux_coeff`` x load balance, the task loss alone)."""
        collect = (
            stage == "train"
            and self.log_expert_utilisation_every > 0
            and self.global_step % self.log_expert_utilisation_every == 0
        )
        out = self.stacks(batch["input_ids"], batch["attention_mask"], collect_expert_fractions=collect)
        task_loss = causal_lm_loss(out.logits, batch["labels"])
        loss = task_loss + self.aux_term(out.aux_loss)
        tag, batch_size = self.stack_tag, batch["input_ids"].shape[0]
        on_step = stage == "train"
        self.log(
            f"{stage}/loss/{tag}",
            task_loss,
            on_step=on_step,
            on_epoch=not on_step,
            batch_size=batch_size,
            sync_dist=not on_step,
        )
        self.log(
            f"{stage}/aux_loss/{tag}",
            out.aux_loss,
            on_step=on_step,
            on_epoch=not on_step,
            batch_size=batch_size,
            sync_dist=not on_step,
        )
        if stage == "val":
            self.log("val_loss", task_loss, on_epoch=True, prog_bar=True, batch_size=batch_size, sync_dist=True)
        if out.expert_fractions:
            utilisation = torch.stack(out.expert_fractions).mean(0)  # [E], mean over layers
            for expert, share in enumerate(utilisation):
                self.log(f"experts/{tag}/e{expert}", share, on_step=True, on_epoch=False)
        return loss, task_loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, task_loss = self._common_step(batch, "train")
        if self.skip_if_nonfinite(loss, what="training loss"):  # every rank skips, or none does
            return self.skip_step()
        # The bar shows train_loss beside val_loss: the same quantity, the task loss. The load-balance
        # term is train/aux_loss/<stack>; the sum the optimizer minimises is train_total_loss.
        self.log("train_loss", task_loss, prog_bar=True)
        self.log("train_total_loss", loss)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._common_step(batch, "val")[1]

    def on_train_start(self) -> None:
        # Lightning 2.x keeps submodules in whatever mode they are in (it only restores modes
        # around validation); the base is loaded in eval mode, so switch to training here or
        # the gating noise would depend on how the process got to this round.
        self.stacks.train()

    def on_train_epoch_start(self) -> None:
        # Gating noise is a function of (seed, stack, epoch) drawn from its own generator, so a
        # resumed round replays it exactly whatever else consumed the global RNG.
        info = self.stacks.active_info
        stack = (self.domain_names.index(info.domain), info.round) if info else ()
        generator = torch.Generator(device=self.device)
        generator.manual_seed(derive_seed(self.seed, "gating-noise", *stack, self.current_epoch))
        self.stacks.context.noise_generator = generator

    # ------------------------------------------------------------------ the phase
    def run_phase(self, context: PhaseContext) -> None:
        """The whole curriculum: every domain, every boosting round (see ``driver.py``)."""
        from brainstacks_pl.driver import CurriculumDriver
        from brainstacks_pl.report import print_forgetting_report, print_sft_summary

        hooks = [context.callbacks["null_space"]] if "null_space" in context.callbacks else []
        driver = CurriculumDriver(
            self,
            context.datamodule,
            context.run_dir,
            context.trainer_factory,
            boosting=context.callbacks["boosting"],
            best_stack=context.callbacks.get("best_stack"),
            logger=context.logger,
            domain_hooks=hooks,
            accept_new_base=context.accept_new_base,
        )
        manifest = driver.run_all(context.settings)
        if driver.run.is_writer:
            print_forgetting_report(driver.forgetting, driver.run.root, context.logger)
            print_sft_summary(manifest, driver.run.root, context.settings, rerun=not driver.trained)
