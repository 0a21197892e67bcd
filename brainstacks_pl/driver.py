"""The curriculum driver: domains in order, boosting rounds within each, one fit per round.

Why one ``Trainer.fit`` per round (docs/design.md): a fresh fit sees exactly one trainable
stack, so the optimizer, the scheduler and DDP's gradient buckets are built for it with no
surgery on a running trainer; a round's Lightning checkpoint then holds exactly that stack.
Everything that must survive a kill is on disk before the next step starts: stack files and
the manifest after each round, the forgetting matrix and the domain's completion after each
domain. A restarted run loads the finished stacks (checksums verified), resumes the
interrupted round from its last checkpoint and goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from brainstacks_pl.callbacks.best_stack import BestStackCallback
from brainstacks_pl.callbacks.boosting import ResidualBoosting
from brainstacks_pl.callbacks.forgetting import ForgettingMatrix
from brainstacks_pl.phase import DomainStart, record_settings, stack_seed
from brainstacks_pl.run import RunDirectory
from brainstacks_pl.storage import Manifest

log = logging.getLogger(__name__)

__all__ = ["CurriculumDriver"]


class CurriculumDriver:
    """Runs every domain and every boosting round of a ``StackSFTModule``.

    ``trainer_factory(round_dir)`` returns a fresh ``Trainer`` for one round; the callbacks
    it carries (``BestStackCallback``, ``ResidualBoosting``, ...) are shared across rounds.
    ``boosting`` and ``best_stack`` are those same instances (the phase context's callbacks):
    the driver hands ``boosting`` the run and the ``best_stack`` whose snapshot it freezes.
    """

    def __init__(
        self,
        module: L.LightningModule,
        datamodule: L.LightningDataModule,
        run_dir: str | Path,
        trainer_factory: Callable[[Path], L.Trainer],
        boosting: ResidualBoosting,
        best_stack: BestStackCallback | None = None,
        logger=None,
        domain_hooks: list | None = None,
        accept_new_base: bool = False,
    ):
        self.module = module
        self.datamodule = datamodule
        self.run = RunDirectory(
            run_dir, is_writer=getattr(rank_zero_only, "rank", 0) == 0, accept_new_base=accept_new_base
        )
        self.trainer_factory = trainer_factory
        self.boosting = boosting
        self.best_stack = best_stack
        self.logger = logger
        self.domain_hooks = domain_hooks or []
        self.forgetting = ForgettingMatrix(self.run.root / "forgetting_matrix.json")
        self.trained: list[str] = []
        """Domains this call trained (empty: the run was already finished)."""

    def run_all(self, settings: dict | None = None) -> Manifest:
        """Train every unfinished domain; ``settings`` (the phase's options) are recorded in the
        manifest when this call finishes the curriculum."""
        if Manifest.exists(self.run.root):
            Manifest.load(self.run.root)  # a damaged run directory fails before the data is prepared
        stacks = self.module.build()
        self.datamodule.setup("fit")
        self.run.acquire_lock()
        try:
            manifest = self.run.open(stacks, self.datamodule.prompt_template)
            self.run.load_stacks(stacks)
            self.boosting.attach(self.run, self.best_stack)
            for domain_index, domain in enumerate(self.datamodule.domain_names):
                if domain in manifest.completed_domains:
                    continue
                self._train_domain(domain_index, domain)
                self.forgetting.evaluate(
                    stacks, self.datamodule, domain, self.module.device, self.logger, write=self.run.is_writer
                )
                manifest.completed_domains.append(domain)
                self.trained.append(domain)
                self.run.save_manifest()
            if self.trained and settings:
                record_settings(manifest, "sft", settings)
                self.run.save_manifest()
            return manifest
        finally:
            self.run.release_lock()

    def _train_domain(self, domain_index: int, domain: str) -> None:
        stacks = self.module.stacks
        self.datamodule.set_domain(domain)
        start = DomainStart(
            domain=domain,
            domain_index=domain_index,
            previous_domains=list(self.datamodule.domain_names[:domain_index]),
            stacks=stacks,
            datamodule=self.datamodule,
            run=self.run,
            device=self.module.device,
            logger=self.logger,
        )
        for hook in self.domain_hooks:
            hook.on_domain_start(start)
        while self.boosting.wants_another_round(self.run.records(domain)):
            round = len(self.run.records(domain))
            stacks.add_stack(domain, round, seed=stack_seed(self.module.seed, domain_index, round))
            trainer = self.trainer_factory(self.run.round_dir(domain, round))
            ckpt = self.run.resume_checkpoint(domain, round)
            if ckpt:
                log.info("resuming %s round %d from %s", domain, round, ckpt)
            trainer.fit(self.module, datamodule=self.datamodule, ckpt_path=ckpt, weights_only=True)
            if stacks.active_info is not None:
                raise RuntimeError(
                    f"training of {domain} round {round} was interrupted; run the same command again to resume it"
                )
