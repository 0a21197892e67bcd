"""Reading the sandbox init's report pipe into an ``ExecutionResult``.

Kept apart from the executors: the report is the one channel the verdict comes from (the
program never holds it), so how it is decoded and when it is not trusted is one idea.
"""

from __future__ import annotations

from brainstacks_pl.sandbox import _wire
from brainstacks_pl.sandbox.base import ExecutionResult, TestOutcome

__all__ = ["parse_report"]


def parse_report(data: bytes) -> ExecutionResult:
    """The init's report records as a result: one ``test`` record per test, then ``done``.
    A report that is unreadable, has gaps or ends without ``done`` is a sandbox failure, never
    a verdict."""
    result = ExecutionResult()
    view, pos = memoryview(data), 0
    tests: dict[int, TestOutcome] = {}
    try:
        while pos + 4 <= len(view):
            size = int.from_bytes(view[pos : pos + 4], "big")
            record = _wire.loads(view[pos + 4 : pos + 4 + size])
            pos += 4 + size
            if record[0] == "test":
                _, index, passed, error = record
                tests[index] = TestOutcome(index, bool(passed), error)
            elif record[0] == "done":
                _, status, timed_out, error, _passed, _seconds = record
                result.returncode, result.timed_out, result.error = status, bool(timed_out), error
                result.complete = True
                if error and error.startswith("sandbox failed"):
                    result.sandbox_failed, result.complete = True, False
    except (_wire.WireError, ValueError, TypeError) as err:
        result.sandbox_failed, result.complete = True, False
        result.error = f"unreadable sandbox report: {err}"
    result.tests = [tests[i] for i in sorted(tests)]
    if result.complete and sorted(tests) != list(range(len(tests))):
        result.sandbox_failed, result.complete = True, False
        result.error = "the sandbox report has gaps"
    if not result.complete and result.error is None:
        result.sandbox_failed = True
        result.error = "the sandbox ended without a verdict"
    return result
