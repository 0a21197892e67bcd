"""Evaluation of a run directory: bundled/YAML tasks, three modes, and an lm-eval model type.

``brainstacks evaluate --run RUN --tasks demo`` scores base / ungated / routed (see
docs/evaluation.md). ``brainstacks_pl.evaluation.lm_eval_adapter`` registers the lm-eval
model type ``brainstacks``; it is not imported here so lm-eval stays an optional dependency.
"""

from brainstacks_pl.evaluation.engine import NoRouterError, ScoreRequest, StackScorer
from brainstacks_pl.evaluation.scoring import (
    ContinuationScore,
    cut_at_stop,
    encode_pair,
    pick_choice,
    score_continuations,
)
from brainstacks_pl.evaluation.tasks import TaskExample, TaskSpec, load_examples, load_task, resolve_tasks

__all__ = [
    "ContinuationScore",
    "NoRouterError",
    "ScoreRequest",
    "StackScorer",
    "TaskExample",
    "TaskSpec",
    "encode_pair",
    "cut_at_stop",
    "load_examples",
    "load_task",
    "pick_choice",
    "resolve_tasks",
    "score_continuations",
]
