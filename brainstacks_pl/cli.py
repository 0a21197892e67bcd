"""The ``brainstacks`` command: a LightningCLI whose ``fit`` runs the whole curriculum.

    brainstacks fit --config configs/demo.yaml --trainer.default_root_dir runs/demo

Every option comes from a class signature or a dataclass, with its docstring as help text;
``--print_config`` prints the full resolved YAML.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from jsonargparse import set_parsing_settings
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger, TensorBoardLogger

from brainstacks_pl.callbacks.best_stack import BestStackCallback
from brainstacks_pl.callbacks.boosting import ResidualBoosting
from brainstacks_pl.data.curriculum import CurriculumDataModule
from brainstacks_pl.driver import CurriculumDriver
from brainstacks_pl.modules.sft import StackSFTModule

__all__ = ["BrainstacksCLI", "cli_main", "main", "CurriculumProgressBar"]


class CurriculumProgressBar(TQDMProgressBar):
    """Shows the domain and boosting round beside the step."""

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        info = getattr(getattr(pl_module, "stacks", None), "active_info", None)
        if info is not None:
            metrics = {"domain": info.domain, "round": info.round, "step": trainer.global_step, **metrics}
        metrics.pop("v_num", None)
        return metrics


class BrainstacksCLI(LightningCLI):
    def __init__(self, *args, **kwargs):
        set_parsing_settings(docstring_parse_attribute_docstrings=True)
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(StackSFTModule, CurriculumDataModule, *args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # Only fit for now: validate/test/predict of a bare LightningModule would bypass the run directory.
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"}}

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(BestStackCallback, "best_stack")
        parser.add_lightning_class_args(ResidualBoosting, "boosting")
        parser.link_arguments("model.model_name_or_path", "data.tokenizer")
        parser.link_arguments("data.domain_names", "model.domains", apply_on="instantiate")
        parser.set_defaults({"trainer.default_root_dir": "runs/brainstacks", "trainer.enable_checkpointing": False})

    # ------------------------------------------------------------------ fit = the curriculum
    def fit(self, model: StackSFTModule, datamodule: CurriculumDataModule, ckpt_path: str | None = None, **_: Any) -> None:
        if ckpt_path is not None:
            raise ValueError("--ckpt_path is not used: rerun the same command with the same default_root_dir to resume")
        run_dir = Path(self.trainer.default_root_dir)
        trainer_config = {k: v for k, v in vars(self._get(self.config_init, "trainer")).items()}
        logger = self._shared_logger(trainer_config.get("logger"), run_dir)
        forced = [self._get(self.config_init, key) for key in ("best_stack", "boosting")]
        # LightningCLI appends the forced callbacks and SaveConfigCallback to this list in place.
        user_callbacks = [cb for cb in trainer_config.get("callbacks") or [] if not any(cb is f for f in forced) and not isinstance(cb, SaveConfigCallback)]
        show_progress = trainer_config.get("enable_progress_bar", True) is not False

        def trainer_factory(round_dir: Path) -> Trainer:
            config = copy.copy(trainer_config)
            config.update(
                default_root_dir=str(round_dir),
                logger=logger if logger is not None else False,
                enable_checkpointing=True,
                callbacks=[
                    *user_callbacks,
                    *forced,
                    ModelCheckpoint(dirpath=round_dir / "checkpoints", filename="last", save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True),
                    *([CurriculumProgressBar()] if show_progress else []),
                ],
            )
            return Trainer(**config)

        driver = CurriculumDriver(model, datamodule, run_dir, trainer_factory, boosting=forced[1], logger=logger)
        driver.run_all()
        if self.trainer.is_global_zero:
            report_run(driver, logger)

    @staticmethod
    def _shared_logger(configured, run_dir: Path) -> Logger | None:
        if configured is False:
            return None
        if configured is None or configured is True:
            return TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)
        return configured[0] if isinstance(configured, list) else configured


def report_run(driver: CurriculumDriver, logger: Logger | None) -> None:
    """The end of a run on the terminal: the forgetting matrix and where everything is."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    forgetting = driver.forgetting
    for mode in ("ungated", "isolated", "as_frozen"):
        table = Table(title=f"forgetting matrix, {mode}: val loss (columns) after each domain (rows)")
        table.add_column("after")
        domains = forgetting.data["domains"]
        for domain in domains:
            table.add_column(domain, justify="right")
        for row in forgetting.data["rows"]:
            table.add_row(row["after"], *[f"{row[mode][d]:.4f}" if d in row[mode] else "" for d in domains])
        console.print(table)
    console.print(f"run directory: {driver.run.root}  (manifest.json, stacks/, forgetting_matrix.json)")
    if logger is not None:
        console.print(f"TensorBoard logs: {logger.log_dir}  ->  tensorboard --logdir {logger.log_dir}")


def cli_main(args: list[str] | None = None) -> BrainstacksCLI:
    """Run the CLI; tests pass ``args`` as a list and get the CLI object back."""
    return BrainstacksCLI(args=args)


def main() -> None:
    """Console-script entry point of ``brainstacks``."""
    cli_main()
