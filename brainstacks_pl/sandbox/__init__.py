"""Running model-written code: executors, limits, and verdicts the code cannot forge.

    from brainstacks_pl.sandbox import Job, Limits, get_executor
    executor = get_executor("local")          # namespaces; fails closed where they are missing
    executor.check()                          # SandboxUnavailable names the opt-in settings
    result = executor.run(Job(code, tests=("assert f(1) == 2",)), Limits(timeout=5))
    result.all_passed, result.pass_rate, result.tests

Executors: ``LocalIsolatedExecutor`` (``"local"``, the default), ``UnisolatedExecutor``
(``"unisolated"``, an explicit opt-in that warns on every run), ``RemoteExecutor``
(``{"kind": "remote", "url": ...}``, a code-execution service over HTTP, e.g.
``python -m brainstacks_pl.sandbox.server`` on another machine), or any ``Executor`` subclass by
import path (``{"class_path": ..., "init_args": {...}}``). Threat model: ``docs/sandbox.md``.
"""

from brainstacks_pl.sandbox.base import (
    ExecutionResult,
    Executor,
    Job,
    Limits,
    SandboxError,
    SandboxUnavailable,
    TestOutcome,
    default_workers,
    split_tests,
)
from brainstacks_pl.sandbox.local import LocalIsolatedExecutor, UnisolatedExecutor
from brainstacks_pl.sandbox.registry import get_executor
from brainstacks_pl.sandbox.remote import RemoteExecutor

__all__ = [
    "ExecutionResult",
    "Executor",
    "Job",
    "Limits",
    "LocalIsolatedExecutor",
    "RemoteExecutor",
    "SandboxError",
    "SandboxUnavailable",
    "TestOutcome",
    "UnisolatedExecutor",
    "default_workers",
    "get_executor",
    "split_tests",
]
