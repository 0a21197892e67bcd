"""Lightning callbacks of the inner loop and the curriculum."""

from brainstacks_pl.callbacks.best_stack import BestStackCallback
from brainstacks_pl.callbacks.boosting import ResidualBoosting
from brainstacks_pl.callbacks.forgetting import ForgettingMatrix
from brainstacks_pl.callbacks.nullspace import NullSpaceProjection
from brainstacks_pl.callbacks.throughput import ThroughputRecorder

__all__ = ["BestStackCallback", "ForgettingMatrix", "NullSpaceProjection", "ResidualBoosting", "ThroughputRecorder"]
