"""AlignmentModule: what DPO and GRPO share — continue an SFT run directory with one more stack.

A phase ``brainstacks fit --config configs/dpo_demo.yaml --trainer.default_root_dir RUN``:

1. reads ``RUN/manifest.json`` and builds the ``BrainstacksModel`` from its base model id,
   ``StackConfig`` and domain list (so the stacks on disk fit by construction), loads every
   frozen stack (checksums verified);
2. adds a new active stack for ``domain`` at the domain's next free round (``<domain>-r<k>``);
3. runs one ``Trainer.fit`` (``BestStackCallback`` keeps the best-validation snapshot; the
   phase declares it is the only forced callback it uses, ``phase_callbacks``);
4. measures the held-out metrics before and after, refuses non-finite weights, freezes the
   stack and writes it through ``RunDirectory.write_stack`` with ``StackRecord(phase=...)``;
   ``manifest.extra["alignment"]`` gets the before/after numbers.

The reference policy of DPO and GRPO is this same model with its active stack switched off
(``BrainstacksModel.active_off()``): the base and the frozen stacks, no second copy in memory.
A rerun after the phase has finished ``max_phase_stacks`` stacks for the domain does nothing;
a rerun after a kill resumes the round from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.utilities import rank_zero_only

from brainstacks_pl.config import StackConfig
from brainstacks_pl.model import BrainstacksModel
from brainstacks_pl.modules.serving import ServedConfiguration
from brainstacks_pl.modules.stack_module import StackModule
from brainstacks_pl.phase import PhaseContext, record_settings, stack_seed
from brainstacks_pl.storage import MANIFEST_NAME, Manifest, StackRecord

log = logging.getLogger(__name__)

__all__ = ["AlignmentModule"]


class AlignmentModule(StackModule):
    """Base of the alignment phases (see the module docstring); subclasses set ``phase``.

    Args:
        domain: The domain whose next stack this phase trains (must be in the run's manifest).
        model_name_or_path: Base model; None: the run manifest's ``base_model_id`` (the same
            model at another path is fine: layer shapes are checked).
        warmup_steps: Linear warmup steps of the learning rate.
        scheduler: ``constant`` after warmup, or ``cosine`` decay to ``min_lr_ratio`` x lr.
        max_phase_stacks: Stacks of this phase the domain ends up with: a rerun once they exist
            does nothing; raise it to train one more on top.
        serve: The configuration the stack trains and is measured in, the one it will be served
            in (``modules/serving.py``): ``auto`` = ``routed`` by the run's trained router when
            there is one, else ``as_frozen`` (the domain's and earlier domains' stacks);
            ``ungated`` = every stack on.
        **kwargs: See ``StackModule`` (quantization, dtype, optimizer, min_lr_ratio, seed).
    """

    phase: ClassVar[str] = ""
    phase_callbacks: ClassVar[tuple[str, ...]] = ("best_stack",)
    """The CLI's forced callbacks this phase's trainer carries (``brainstacks_pl.phase``):
    ``BestStackCallback`` guards the stack; ``ResidualBoosting`` (freezes SFT rounds, measures LM
    loss) and ``NullSpaceProjection`` (its basis is computed by the curriculum driver's domain
    hook, which this phase does not run) have nothing to do here."""

    def __init__(
        self,
        domain: str,
        model_name_or_path: str | None = None,
        warmup_steps: int = 0,
        scheduler: Literal["constant", "cosine"] = "constant",
        max_phase_stacks: int = 1,
        serve: Literal["auto", "routed", "as_frozen", "ungated"] = "auto",
        **kwargs: Any,
    ):
        super().__init__(model_name_or_path, warmup_steps=warmup_steps, scheduler=scheduler, **kwargs)
        if max_phase_stacks < 1:
            raise ValueError(f"max_phase_stacks must be >= 1, got {max_phase_stacks}")
        self.domain = domain
        self.max_phase_stacks = max_phase_stacks
        self.serve = serve
        self.serving: ServedConfiguration | None = None
        self.tokenizer = None
        self._phase_logger = None

    # ------------------------------------------------------------------ model
    def build(self, manifest: Manifest) -> BrainstacksModel:
        """The base and stack layers exactly as the run directory describes them (idempotent)."""
        if self.stacks is None:
            name = self.model_name_or_path or manifest.base_model_id
            if not name:
                raise ValueError("the run manifest names no base model: set model.model_name_or_path")
            self.model_name_or_path = name
            self.stack_config = StackConfig.from_dict(manifest.stack_config)
            self.stacks = BrainstacksModel.from_pretrained(
                name, self.stack_config, list(manifest.domains), quantization=self.quantization, dtype=self.dtype_name
            )
        return self.stacks

    def served(self, prompts: list[list[int]] | None = None, repeat: int = 1, tile: int = 1):
        """The routing scope of a batch as served (``serving.ServedConfiguration.scope``);
        outside ``run_phase`` (a module driven by hand) the routing is left as it is."""
        return self.serving.scope(prompts, repeat, tile) if self.serving is not None else contextlib.nullcontext()

    # ------------------------------------------------------------------ the phase
    def run_phase(self, context: PhaseContext) -> None:
        from brainstacks_pl.run import RunDirectory

        is_writer = getattr(rank_zero_only, "rank", 0) == 0
        run = RunDirectory(context.run_dir, is_writer=is_writer, accept_new_base=context.accept_new_base)
        if not Manifest.exists(run.root):
            raise FileNotFoundError(
                f"{run.root}: no {MANIFEST_NAME}; run the SFT phase "
                "(configs/demo.yaml) into this --trainer.default_root_dir first"
            )
        manifest = Manifest.load(run.root)
        stacks = self.build(manifest)
        datamodule = context.datamodule
        if datamodule is None:
            raise ValueError(f"the {self.phase} phase needs a data module (data: in the config)")
        if getattr(datamodule, "tokenizer_name", None) is None and getattr(datamodule, "_tokenizer", None) is None:
            datamodule.tokenizer_name = self.model_name_or_path
        self.tokenizer = datamodule.tokenizer
        datamodule.use_run_template(manifest.prompt_template)  # prompts as the stacks were trained on
        self._phase_logger = context.logger
        run.acquire_lock()
        try:
            run.open(stacks)
            run.load_stacks(stacks)
            if self.domain not in stacks.domains:
                raise ValueError(f"domain {self.domain!r} is not in this run; its domains are {stacks.domains}")
            self.serving = ServedConfiguration.for_run(
                stacks, self.tokenizer, run.manifest, run.root, self.domain, self.serve
            )
            done = [r for r in run.records(self.domain) if r.phase == self.phase]
            rerun = len(done) >= self.max_phase_stacks
            if not rerun:
                record_settings(run.manifest, f"{self.phase}:{self.domain}", context.settings)
                self._train_one_stack(run, context, datamodule)
        finally:
            run.release_lock()
        if run.is_writer:
            self.print_summary(run, context.settings, rerun)

    def print_summary(self, run, settings: dict, rerun: bool) -> None:
        """Before/after on the held-out set and the stack file of this phase's last stack."""
        from brainstacks_pl.report import print_phase_summary, rerun_note

        records = [r for r in run.records(self.domain) if r.phase == self.phase]
        entries = [
            e
            for e in run.manifest.extra.get("alignment", [])
            if e["phase"] == self.phase and e["domain"] == self.domain
        ]
        entry = entries[-1] if entries else {"before": {}, "after": {}}
        rows = [
            (k, entry["before"].get(k), entry["after"].get(k))
            for k in dict.fromkeys([*entry["before"], *entry["after"]])
        ]
        artifacts = {"stack": run.root / records[-1].file} if records else {}
        notes = []
        if rerun:
            what = (
                f"{self.phase} of {self.domain} ({len(records)} stack(s), "
                f"max_phase_stacks={self.max_phase_stacks}) in {run.root}"
            )
            notes.append(rerun_note(what, run.manifest, f"{self.phase}:{self.domain}", settings))
        served = entry.get("served")
        title = f"{self.phase} on {self.domain}: held-out before / after" + (
            f" (served as: {served})" if served else ""
        )
        print_phase_summary(title, rows, artifacts, notes)

    def _train_one_stack(self, run, context, datamodule) -> StackRecord:
        stacks = self.stacks
        round = len(run.records(self.domain))
        stacks.add_stack(self.domain, round, seed=stack_seed(self.seed, stacks.domains.index(self.domain), round))
        datamodule.setup("fit")
        before = self.evaluate(datamodule.val_dataloader())
        self._log_summary("before", before, round)
        best = context.callbacks.get("best_stack")
        if best is not None:
            # The SFT policy (the new stack at B = 0) is the first candidate: a phase none of whose
            # epochs beats it writes that no-op stack, never one worse on the held-out set.
            best.start_from(before["val_loss"])
        started = time.monotonic()
        trainer = context.trainer_factory(run.round_dir(self.domain, round))
        ckpt = run.resume_checkpoint(self.domain, round)
        if ckpt:
            log.info("resuming %s %s round %d from %s", self.phase, self.domain, round, ckpt)
        trainer.fit(self, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        if trainer.interrupted:
            raise RuntimeError(
                f"{self.phase} training of {self.domain} round {round} "
                "was interrupted; run the same command again to resume it"
            )
        bad = [k for k, v in stacks.active_state_dict().items() if not torch.isfinite(v).all()]
        if bad:
            raise FloatingPointError(f"the {self.phase} stack has non-finite weights in {bad[:3]}; nothing was written")
        after = self.evaluate(datamodule.val_dataloader())
        self._log_summary("after", after, round)
        tensors = stacks.freeze_stack()
        record = StackRecord(
            file="",
            sha256="",
            domain=self.domain,
            round=round,
            phase=self.phase,
            start_val_loss=before["val_loss"],
            loss_at_freeze=after["val_loss"],
            train_seconds=round_seconds(time.monotonic() - started),
            steps=trainer.global_step,
            **(best.record_fields() if best is not None else {}),
        )
        run.manifest.extra.setdefault("alignment", []).append(
            {
                "phase": self.phase,
                "domain": self.domain,
                "round": round,
                "served": self.serving.describe() if self.serving else "ungated: every stack",
                "before": before,
                "after": after,
                "nonfinite_steps": self.nonfinite_steps,
            }
        )
        return run.write_stack(tensors, record)

    def _log_summary(self, when: str, metrics: dict[str, float], round: int) -> None:
        log.info(
            "%s %s round %d, held-out %s: %s",
            self.phase,
            self.domain,
            round,
            when,
            {k: round_seconds(v) for k, v in metrics.items()},
        )
        logger = self._phase_logger
        if logger is not None:
            logger.log_metrics({f"{self.phase}/{when}/{k}": v for k, v in metrics.items()}, step=round)

    def evaluate(self, dataloader) -> dict[str, float]:
        """Held-out metrics of the current policy (subclasses); must include ``val_loss``."""
        raise NotImplementedError


def round_seconds(value: float) -> float:
    return float(f"{value:.6g}")
