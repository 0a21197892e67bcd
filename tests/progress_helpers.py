"""What a phase's progress bar shows, recorded for tests that drive the CLI.

Not in ``conftest.py``: Lightning imported before pytest's log capture starts turns off the
propagation of its loggers (``lightning.pytorch`` adds its own handler when the root logger
has none), and every ``caplog`` test that reads a ``rank_zero_info`` line would then see nothing.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback


class ProgressBarRecorder(Callback):
    """Test helper (``--trainer.callbacks=[{class_path: progress_helpers.ProgressBarRecorder}]``): what the
    progress bar shows after every training batch and every validation, and every metric logged
    at that moment. The bar is ``CurriculumProgressBar``, the one a phase shows, whether or not
    the test's trainer draws it."""

    def __init__(self):
        self.train: list[tuple[dict[str, float], dict[str, float]]] = []
        """(bar, logged) after each training batch."""
        self.val: list[dict[str, float]] = []
        """The bar after each validation (sanity checks left out)."""

    @staticmethod
    def _bar(trainer, pl_module) -> dict[str, float]:
        from brainstacks_pl.cli import CurriculumProgressBar

        return dict(CurriculumProgressBar().get_metrics(trainer, pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.train.append((self._bar(trainer, pl_module), logged))

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val.append(self._bar(trainer, pl_module))
