"""The executor interface: a job (a program, optional tests) and limits in, an execution result out.

An executor runs model-written code somewhere it cannot hurt the trainer and reports, per test,
whether the test ran to its end without raising. The verdict comes from a test runner the
program cannot reach (see ``docs/sandbox.md``); the program's exit status, output and exit hooks
never decide it.
"""

from __future__ import annotations

import ast
import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "ExecutionResult",
    "Executor",
    "Job",
    "Limits",
    "SandboxError",
    "SandboxUnavailable",
    "TestOutcome",
    "default_workers",
    "split_tests",
]

OPT_IN = (
    "Run the code elsewhere with a remote executor (reward kwargs `executor: {kind: remote, url: ...}`), "
    "or opt into the weaker, unisolated executor explicitly with `executor: unisolated` in the reward's "
    "kwargs (it warns on every run). See docs/sandbox.md."
)


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program in it)."""


class SandboxUnavailable(SandboxError):
    """This machine cannot provide the isolation the executor promises; nothing was run."""


@dataclass(frozen=True)
class Limits:
    """What one program may use. Every limit holds for the program and everything it starts."""

    timeout: float = 5.0
    """Wall-clock seconds for the program and all its tests; at the limit everything it started is killed."""
    memory_mb: int = 1024
    """Address space per process (RLIMIT_AS)."""
    cpu_seconds: int | None = None
    """CPU seconds per process (RLIMIT_CPU); None: ``ceil(timeout) + 1``."""
    file_mb: int = 16
    """Largest file a process may write (RLIMIT_FSIZE)."""
    scratch_mb: int = 64
    """Size of the writable scratch directory (a tmpfs, in memory; the only writable place)."""
    scratch_inodes: int = 4096
    """Files and directories the scratch directory may hold."""
    max_processes: int = 64
    """Processes and threads (RLIMIT_NPROC) of the sandbox's user."""
    max_open_files: int = 64
    """Open file descriptors per process (RLIMIT_NOFILE)."""
    max_output: int = 64 << 10
    """Bytes of stdout and of stderr kept (the last ones); the rest is read and dropped."""
    max_value_bytes: int = 4 << 20
    """Largest value the program may send back for one call in a test."""

    def __post_init__(self) -> None:
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout}")
        for name in (
            "memory_mb",
            "file_mb",
            "scratch_mb",
            "scratch_inodes",
            "max_processes",
            "max_open_files",
            "max_output",
            "max_value_bytes",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def cpu(self) -> int:
        return int(self.cpu_seconds) if self.cpu_seconds else int(math.ceil(self.timeout)) + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Limits:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Job:
    """A program and, optionally, its tests.

    With ``tests=None`` the program runs as a script and the result has its exit status. With
    tests, the program runs as a module and then each test (Python source) runs in a separate
    test runner that sees the program's top-level names; calls into the program travel as plain
    data (see ``docs/sandbox.md``, "What a test can do").
    """

    code: str
    tests: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.tests is not None:
            object.__setattr__(self, "tests", tuple(str(t) for t in self.tests))

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "tests": None if self.tests is None else list(self.tests)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        tests = data.get("tests")
        if not isinstance(data.get("code"), str) or not (
            tests is None or (isinstance(tests, list) and all(isinstance(t, str) for t in tests))
        ):
            raise ValueError("a job is {code: str, tests: list[str] | null}")
        return cls(code=data["code"], tests=None if tests is None else tuple(tests))


@dataclass(frozen=True)
class TestOutcome:
    index: int
    passed: bool
    error: str | None = None


@dataclass
class ExecutionResult:
    """What came back. ``tests`` holds one outcome per test, all of them, whenever ``complete``."""

    returncode: int | None = None
    """Exit status of a script (None with tests, at the time limit, or when it never ran)."""
    timed_out: bool = False
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    """Wall time of the whole run, sandbox setup included."""
    tests: list[TestOutcome] = field(default_factory=list)
    complete: bool = False
    """The trusted test runner reported its end (every test accounted for)."""
    error: str | None = None
    """Why tests failed as a whole (the program did not load, the time limit) or the sandbox failed."""
    sandbox_failed: bool = False
    """The sandbox, not the program, failed: the result says nothing about the program."""
    output_dropped: int = 0
    """Bytes of stdout + stderr read and dropped beyond ``Limits.max_output``."""
    executor: str = ""

    @property
    def passed_tests(self) -> int:
        return sum(t.passed for t in self.tests) if self.complete else 0

    @property
    def total_tests(self) -> int:
        return len(self.tests)

    @property
    def all_passed(self) -> bool:
        """Every test ran and passed (and there was at least one)."""
        return self.complete and bool(self.tests) and all(t.passed for t in self.tests)

    @property
    def pass_rate(self) -> float:
        return self.passed_tests / len(self.tests) if self.complete and self.tests else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tests"] = [asdict(t) for t in self.tests]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExecutionResult:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["tests"] = [
            TestOutcome(int(t["index"]), bool(t["passed"]), t.get("error")) for t in data.get("tests") or []
        ]
        return cls(**kwargs)


def default_workers() -> int:
    """Parallel runs of a pool: one per CPU, at most 16."""
    return max(1, min(16, os.cpu_count() or 1))


class Executor(ABC):
    """Runs jobs. Subclasses implement ``run``; ``run_many`` runs a batch (a GRPO group) in a
    bounded pool of threads, each waiting on one sandbox; ``check`` raises ``SandboxUnavailable``
    when the executor cannot work here, before anything is run."""

    name = "executor"
    isolated = False
    """Whether the program is kept from the trainer by the operating system (or another machine)."""

    @abstractmethod
    def run(self, job: Job, limits: Limits = Limits()) -> ExecutionResult: ...

    def run_many(
        self, jobs: Sequence[Job], limits: Limits = Limits(), max_workers: int | None = None
    ) -> list[ExecutionResult]:
        jobs = list(jobs)
        workers = max(1, min(max_workers or default_workers(), len(jobs) or 1))
        if workers == 1:
            return [self.run(job, limits) for job in jobs]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"sandbox-{self.name}") as pool:
            return list(pool.map(lambda job: self.run(job, limits), jobs))

    def check(self) -> None:  # noqa: B027 - an optional hook: by default an executor works everywhere
        """Raise ``SandboxUnavailable`` if this executor cannot run code here."""


def split_tests(tests: Any) -> tuple[str, ...]:
    """The tests of a row, one string each: a list is one test per item; a string is one test per
    top-level ``assert`` (with the statements before it since the previous assert, which run in
    the same namespace), or a single test when it has no top-level assert or does not parse."""
    if tests is None:
        return ()
    if isinstance(tests, (list, tuple)):
        return tuple(str(t) for t in tests if str(t).strip())
    source = str(tests)
    if not source.strip():
        return ()
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return (source,)
    if not any(isinstance(node, ast.Assert) for node in body):
        return (source,)
    lines = [line.encode("utf-8") for line in source.splitlines(keepends=True)]

    def segment(node: ast.stmt) -> str:  # the statement's text, decorators included (ast offsets are utf-8 bytes)
        start = min(
            [(node.lineno, node.col_offset)]
            + [(d.lineno, d.col_offset - 1) for d in getattr(node, "decorator_list", [])]
        )
        (l1, c1), (l2, c2) = start, (node.end_lineno, node.end_col_offset)
        if l1 == l2:
            return lines[l1 - 1][c1:c2].decode("utf-8")
        return (lines[l1 - 1][c1:] + b"".join(lines[l1 : l2 - 1]) + lines[l2 - 1][:c2]).decode("utf-8")

    groups: list[str] = []
    pending: list[str] = []
    for node in body:
        pending.append(segment(node))
        if isinstance(node, ast.Assert):
            groups.append("\n".join(pending) + "\n")
            pending = []
    if pending:  # statements after the last assert belong to it
        groups[-1] += "\n".join(pending) + "\n"
    return tuple(groups)
