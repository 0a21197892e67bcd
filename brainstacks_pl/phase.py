"""What the CLI hands a training phase: a run directory, a trainer factory and a logger.

``brainstacks fit`` works for every phase. A LightningModule that defines
``run_phase(context: PhaseContext)`` drives its own fits (the SFT curriculum runs one per
boosting round; the router phase first discovers its targets); any other LightningModule
gets one plain ``Trainer.fit``. Keeping this contract small is what lets each phase live in
its own module without the CLI knowing about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import lightning as L
from lightning.pytorch.loggers import Logger

__all__ = ["PhaseContext"]


@dataclass
class PhaseContext:
    run_dir: Path
    """The run directory (``--trainer.default_root_dir``): manifest, stacks, logs."""
    trainer_factory: Callable[[Path], L.Trainer]
    """A fresh Trainer whose own files (checkpoints) go under the given directory."""
    datamodule: L.LightningDataModule | None
    logger: Logger | None
    """The one logger shared by every fit of the phase (one TensorBoard directory)."""
    callbacks: dict[str, L.Callback]
    """The CLI's forced callbacks by config key (``best_stack``, ``boosting``)."""
