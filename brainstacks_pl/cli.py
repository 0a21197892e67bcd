"""The ``brainstacks`` command: a LightningCLI whose ``fit`` runs a whole phase.

    brainstacks fit --config configs/demo.yaml --trainer.default_root_dir runs/demo

``model`` and ``data`` are chosen by ``class_path`` in the YAML (one config per phase).
Every option comes from a class signature or a dataclass, with its docstring as help text;
``--print_config`` prints the full resolved YAML.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import set_parsing_settings
from lightning import Trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger, TensorBoardLogger

from brainstacks_pl.callbacks.best_stack import BestStackCallback
from brainstacks_pl.callbacks.boosting import ResidualBoosting
from brainstacks_pl.callbacks.nullspace import NullSpaceProjection
from brainstacks_pl.errors import UserError
from brainstacks_pl.phase import FORCED_CALLBACKS, PhaseContext, flatten_settings, phase_callbacks

__all__ = ["BrainstacksCLI", "cli_main", "run_fit", "main", "CurriculumProgressBar"]

# Trainer arguments that may be objects a Trainer takes ownership of (Lightning sets their
# accelerator, devices and precision): every per-round Trainer needs its own unused copy.
STATEFUL_TRAINER_ARGS = ("strategy", "accelerator", "plugins")


def _not_an_advert(record: logging.LogRecord) -> bool:
    """Lightning logs a tip to install a cloud logger each time a trainer is built (every boosting
    round); a phase's output is its progress and its summary, so the tip is dropped."""
    return not str(record.msg).startswith("💡 Tip:")


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_an_advert)


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
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        # No abbreviations: ``--trainer.max_epoch 2`` must be an error, not ``max_epochs``.
        kwargs.setdefault(
            "parser_kwargs", {"prog": "brainstacks", "allow_abbrev": False, "fit": {"allow_abbrev": False}}
        )
        super().__init__(L.LightningModule, L.LightningDataModule, *args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # Only fit: validate/test/predict of a bare LightningModule would bypass the run directory.
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"}}

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(BestStackCallback, "best_stack")
        parser.add_lightning_class_args(ResidualBoosting, "boosting")
        parser.add_lightning_class_args(NullSpaceProjection, "null_space")
        parser.set_defaults({"trainer.default_root_dir": "runs/brainstacks", "trainer.enable_checkpointing": False})
        parser.add_argument(
            "--accept_new_base",
            type=bool,
            default=False,
            help=(
                "Resume on a base model whose fingerprint differs from the one "
                "the run recorded (a deliberate change; docs/run_directory.md)."
            ),
        )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Trainer:
        # A phase builds one Trainer per round from this config. A strategy given as an object
        # (ModelParallelStrategy in configs/fsdp_demo.yaml) is bound to the first Trainer that uses it and
        # refused by the next ("accelerator set through both strategy class and accelerator
        # flag"), so keep pristine copies before the CLI's own Trainer binds the originals.
        self._pristine_trainer_args = {
            key: copy.deepcopy(config[key])
            for key in STATEFUL_TRAINER_ARGS
            if config.get(key) is not None and not isinstance(config[key], (str, int))
        }
        try:
            return super()._instantiate_trainer(config, callbacks)
        except (MisconfigurationException, ImportError) as err:  # every later Trainer has this config
            raise trainer_refusal(err, config.get("accelerator"), config.get("devices")) from err

    def before_fit(self) -> None:
        # Programmatic links (they differ per phase): the data's tokenizer is the model's, and
        # the model's domain list is the curriculum's.
        model, data = self.model, self.datamodule
        if (
            data is not None
            and getattr(data, "tokenizer_name", "unset") is None
            and hasattr(model, "model_name_or_path")
        ):
            data.tokenizer_name = model.model_name_or_path
        if (
            data is not None
            and hasattr(model, "domain_names")
            and not model.domain_names
            and hasattr(data, "domain_names")
        ):
            model.domain_names = list(data.domain_names)

    def fit(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        **_: Any,
    ) -> None:
        refuse_zero_step_rounds(self.trainer)
        context = self.phase_context(model, datamodule)
        if hasattr(model, "run_phase"):
            if ckpt_path is not None:
                raise ValueError(
                    "--ckpt_path is not used by this phase: rerun the "
                    "same command with the same default_root_dir to resume"
                )
            model.run_phase(context)
        else:
            context.trainer_factory(context.run_dir).fit(
                model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True
            )

    def phase_context(self, model: L.LightningModule, datamodule) -> PhaseContext:
        run_dir = Path(self.trainer.default_root_dir)
        trainer_config = dict(vars(self._get(self.config_init, "trainer")))
        phase = phase_log_name(model)
        logger = self._shared_logger(trainer_config.get("logger"), run_dir, phase)
        own_logger = isinstance(logger, TensorBoardLogger) and trainer_config.get("logger") in (None, True)
        parsed = [self._get(self.config_init, key) for key in FORCED_CALLBACKS]
        forced = {key: self._get(self.config_init, key) for key in phase_callbacks(model)}
        # LightningCLI appends every forced callback and SaveConfigCallback to this list in place.
        user_callbacks = [
            cb
            for cb in trainer_config.get("callbacks") or []
            if not any(cb is f for f in parsed) and not isinstance(cb, SaveConfigCallback)
        ]
        show_progress = trainer_config.get("enable_progress_bar", True) is not False

        def trainer_factory(work_dir: Path, checkpoint: bool = True) -> Trainer:
            config = copy.copy(trainer_config)
            config.update({key: copy.deepcopy(value) for key, value in self._pristine_trainer_args.items()})
            # Each fit (an SFT round, the router fit, an alignment round) logs into its own run
            # ``tensorboard/<phase>/<fit>``: its step axis starts at 0 and its val_loss means one thing.
            fit_name = Path(work_dir).name if Path(work_dir).parent.name == "rounds" else "fit"
            fit_logger = (
                TensorBoardLogger(
                    save_dir=str(run_dir), name="tensorboard", version=f"{phase}/{fit_name}", default_hp_metric=False
                )
                if own_logger
                else logger
            )
            config.update(
                default_root_dir=str(work_dir),
                logger=fit_logger if fit_logger is not None else False,
                enable_checkpointing=checkpoint,
                callbacks=[
                    *(cb for cb in user_callbacks if checkpoint or not isinstance(cb, ModelCheckpoint)),
                    *forced.values(),
                    *([round_checkpoint(work_dir)] if checkpoint else []),
                    *([CurriculumProgressBar()] if show_progress else []),
                    *([LearningRateMonitor(logging_interval="step")] if logger is not None else []),
                ],
            )
            return Trainer(**config)

        config = self.config.get(self.subcommand) if self.subcommand else self.config
        settings = flatten_settings(config.clone().as_dict()) if config is not None else {}
        return PhaseContext(
            run_dir=run_dir,
            trainer_factory=trainer_factory,
            datamodule=datamodule,
            logger=logger,
            callbacks=forced,
            settings=settings,
            accept_new_base=bool(config.get("accept_new_base", False)) if config is not None else False,
        )

    @staticmethod
    def _shared_logger(configured, run_dir: Path, phase: str) -> Logger | None:
        """The phase's own logger (``tensorboard/<phase>``: forgetting matrix, null space, router
        report, before/after); a logger the user configured is used as it is."""
        if configured is False:
            return None
        if configured is None or configured is True:
            return TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=phase, default_hp_metric=False)
        return configured[0] if isinstance(configured, list) else configured


def round_checkpoint(work_dir: Path) -> ModelCheckpoint:
    """``<work_dir>/checkpoints/last.ckpt``, written at every epoch end: what a rerun resumes from."""
    return ModelCheckpoint(
        dirpath=Path(work_dir) / "checkpoints",
        filename="last",
        save_top_k=1,
        enable_version_counter=False,
        save_on_train_epoch_end=True,
    )


def phase_log_name(model: L.LightningModule) -> str:
    """``sft``, ``router``, ``dpo-chat``, ``grpo-math``...: the phase's TensorBoard run name."""
    phase = getattr(model, "phase", None) or type(model).__name__.removesuffix("Module").lower()
    domain = getattr(model, "domain", None)
    return f"{phase}-{domain}" if isinstance(domain, str) and domain else phase


def _torch_devices() -> str:
    """What torch finds on this machine, for an error about hardware that is not there."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} CUDA GPU(s)"
    build = "" if torch.version.cuda else f"; torch {torch.__version__} is built without CUDA"
    return f"no CUDA GPU (torch.cuda.is_available() is False{build})"


def trainer_refusal(err: Exception, accelerator: Any, devices: Any) -> UserError:
    """Lightning's refusal to build the Trainer as one line: the flag, what was found, what to pass.

    An accelerator this machine lacks (Lightning's ``AcceleratorRegistry`` says which it has;
    ``gpu`` is Lightning's alias of ``mps`` or ``cuda``) gets the accelerator to pass instead;
    anything else Lightning refuses (more devices than there are, a strategy's missing package)
    keeps Lightning's own words, on one line, with what torch found beside a device request."""
    available = sorted(name for name in AcceleratorRegistry if AcceleratorRegistry[name]["accelerator"].is_available())
    flag = accelerator.lower() if isinstance(accelerator, str) else None
    wanted = ("mps", "cuda") if flag == "gpu" else (flag,)
    if flag is not None and all(name in AcceleratorRegistry for name in wanted) and not set(wanted) & set(available):
        instead = next((name for name in available if name != "cpu"), "cpu")
        return UserError(
            f"--trainer.accelerator {accelerator}: not on this machine: found {_torch_devices()}, and "
            f"Lightning can use {', '.join(available)}; pass --trainer.accelerator {instead}"
        )
    said = " ".join(str(err).split()) or type(err).__name__
    hint = f"; found {_torch_devices()}" if flag not in (None, "cpu") else ""
    return UserError(
        f"the Trainer refused --trainer.accelerator {accelerator} --trainer.devices {devices}: {said}{hint}"
    )


def refuse_zero_step_rounds(trainer: Trainer) -> None:
    """A round that cannot take a step would freeze an untrained stack and mark its domain done."""
    limit = trainer.limit_train_batches
    for flag, value in (
        ("max_epochs", trainer.max_epochs),
        ("max_steps", trainer.max_steps),
        ("limit_train_batches", limit),
    ):
        if value == 0:
            raise UserError(
                f"--trainer.{flag} 0 would freeze untrained stacks and mark "
                "their domains completed; every round needs at least one step"
            )


def cli_main(args: list[str] | None = None) -> BrainstacksCLI:
    """Run the CLI; tests pass ``args`` as a list and get the CLI object back.

    ``brainstacks fit`` passes the command line as ``args`` (its own parser took ``fit`` off
    ``sys.argv``); Lightning warns on every such call that ``sys.argv`` also has arguments, and
    Lightning's own use of a torch API torch deprecated warns in every fit. Neither is the user's
    to act on and both would sit among the first lines they read, so those two are silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        return BrainstacksCLI(args=args)


USER_ERROR_TYPES = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
"""What a phase raises on bad input (data files, configs, run directories): converted to a
``UserError`` at the ``fit`` boundary. ``BRAINSTACKS_DEBUG=1`` still shows the traceback."""


def run_fit(argv: list[str]) -> int:
    """``brainstacks fit ...`` (``argv[0] == "fit"``), called by ``brainstacks_pl.commands.main``."""
    try:
        cli_main(argv)
    except UserError:
        raise
    except USER_ERROR_TYPES as err:
        cause = err
        while cause is not None and not isinstance(cause, UserError):  # jsonargparse wraps what __init__ raised
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise UserError(str(cause)) from err
        first_line = (str(err).splitlines() or [""])[0]
        raise UserError(f"{type(err).__name__}: {first_line}") from err
    return 0


def main() -> None:
    """Kept for ``python -m brainstacks_pl.cli``; the console script is ``brainstacks_pl.commands``."""
    from brainstacks_pl.commands import console_main

    console_main()
