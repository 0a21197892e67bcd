"""Verifiable rewards for GRPO: plain callables ``reward(prompts, completions, **columns) -> list[float]``.

Every reward gets the prompts, the decoded completions (one per sample, a prompt repeated once
per group member) and every other column of the prompt data as a keyword list of the same
length (``answer``, ``tests``, ...). It must return one finite float per completion; the GRPO
module checks that and says which function broke the rule.

- ``math_exact_match``: 1 when the completion's final number (the number after its last
  ``####``: ``answers.extract_answer(text, "hash")``, the very rule ``evaluate`` scores math
  generation with) equals the reference answer.
- ``format_reward``: 1 when the completion ends its answer with a ``#### <number>`` line.
- ``math_operands_reward``: the share of the prompt's numbers that the completion's working
  uses (a dense, verifiable step reward: a policy that never gets the final number right can
  still be ranked by whether it starts from the right quantities).
- ``code_tests_reward``: 1 when every test of the row's ``tests`` ran and passed against the
  completion's code (``partial_credit: true``: the share of tests that passed);
  ``code_pass_rate_reward`` is the partial-credit one by name, like open-r1's ``code_reward``
  next to its ``binary_code_reward``.

Model-written code runs in an executor from ``brainstacks_pl.sandbox`` (the reward kwarg
``executor``): by default ``LocalIsolatedExecutor``, Linux namespaces with no network, no view of
the trainer's processes or files, rlimits, and a verdict from a test runner the code cannot
reach. Where the machine cannot isolate, the reward refuses to run (``SandboxUnavailable``, at
config time through ``code_tests_reward.check``) and names the two ways on: a remote executor or
the explicit ``executor: unisolated``. ``run_sandboxed`` runs a plain script the same way.
Threat model and layers: ``docs/sandbox.md``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from brainstacks_pl.answers import answers_match, extract_answer
from brainstacks_pl.sandbox import Job, Limits, SandboxError, SandboxUnavailable, get_executor, split_tests

log = logging.getLogger(__name__)

__all__ = [
    "SandboxError",
    "SandboxResult",
    "SandboxUnavailable",
    "code_pass_rate_reward",
    "code_tests_reward",
    "extract_code",
    "format_reward",
    "math_exact_match",
    "math_operands_reward",
    "run_sandboxed",
]

_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_FORMAT_RE = re.compile(r"####\s*-?\$?\d[\d,]*(?:\.\d+)?\s*$")
_FENCE_RE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


# --------------------------------------------------------------------------- math


def _to_number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", ""))
    except ValueError:
        return None


def math_exact_match(
    prompts: Sequence[str], completions: Sequence[str], answer: Sequence[Any], **_: Any
) -> list[float]:
    """1.0 where the completion's ``hash`` answer equals the reference ``answer`` (to 1e-6), else 0.0."""
    return [
        float(answers_match(extract_answer(str(completion), "hash"), str(reference), "hash"))
        for completion, reference in zip(completions, answer)
    ]


def math_operands_reward(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    """Share of the prompt's distinct numbers that appear in the completion's working (the text
    before ``####``); 0 for a prompt without numbers.

    Why: GRPO learns only from groups whose rewards differ. A small policy that is almost never
    exactly right scores 0 on every sample of most groups; this step reward still separates the
    samples that copied the right quantities from those that invented others, and copying them
    is the first half of getting the answer right (``math_exact_match`` keeps the larger weight).
    """
    scores = []
    for prompt, completion in zip(prompts, completions):
        wanted = {_to_number(n) for n in _NUMBER_RE.findall(str(prompt))} - {None}
        working = str(completion).split("####", 1)[0]
        used = {_to_number(n) for n in _NUMBER_RE.findall(working)}
        scores.append(len(wanted & used) / len(wanted) if wanted else 0.0)
    return scores


def format_reward(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    """1.0 where the completion ends with a ``#### <number>`` line (the demo's answer format)."""
    return [float(bool(_FORMAT_RE.search(c.strip()))) for c in completions]


# --------------------------------------------------------------------------- code


@dataclass
class SandboxResult:
    """What ``run_sandboxed`` returns."""

    returncode: int | None
    """Exit status (None when killed for the time limit)."""
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        """The script exited with status 0 in time. Not a test verdict: a program can always
        exit 0; the code rewards use the test runner's per-test results instead."""
        return not self.timed_out and self.returncode == 0


def run_sandboxed(
    code: str, timeout: float = 5.0, memory_mb: int = 1024, max_output: int = 10_000, executor: Any = None
) -> SandboxResult:
    """Run ``code`` as a script in the sandbox (``executor``: see ``sandbox.get_executor``; the
    default is the isolated local one, which raises ``SandboxUnavailable`` where it cannot work).
    Keeps the last ``max_output`` bytes of each stream."""
    runner = get_executor(executor)
    runner.check()
    result = runner.run(Job(code), Limits(timeout=timeout, memory_mb=memory_mb, max_output=max(1, int(max_output))))
    if result.sandbox_failed:
        raise SandboxError(f"the sandbox failed: {result.error}")
    return SandboxResult(
        returncode=None if result.timed_out else result.returncode,
        timed_out=result.timed_out,
        stdout=result.stdout[-max_output:],
        stderr=result.stderr[-max_output:],
        seconds=result.seconds,
    )


def extract_code(completion: str) -> str:
    """The code of a completion: the first fenced ```python block if there is one, else the whole text."""
    fenced = _FENCE_RE.search(completion)
    return fenced.group(1) if fenced else completion


def code_tests_reward(
    prompts: Sequence[str],
    completions: Sequence[str],
    tests: Sequence[Any],
    timeout: float = 5.0,
    max_workers: int | None = None,
    partial_credit: bool = False,
    executor: Any = None,
    memory_mb: int = 1024,
    **_: Any,
) -> list[float]:
    """Score each completion's code against its row's ``tests``.

    ``tests`` per row: a string of Python (one test per top-level ``assert``, with the statements
    before it) or a list of strings (one test each); ``sandbox.split_tests`` says exactly. The
    code runs as a module in the sandbox, then a separate test runner runs the tests one by one
    against its top-level names. Reward 1.0 when every test ran and passed, else 0.0; with
    ``partial_credit`` the share of tests that passed (TRL / open-r1's pass-rate convention).
    Exiting early, hanging, crashing or failing to load scores 0; a row without tests scores 0.

    The group's completions run in parallel, ``max_workers`` at a time (default: one per CPU,
    at most 16), each within ``timeout`` seconds and ``memory_mb`` of address space per process.
    ``executor`` picks where (``sandbox.get_executor``: ``local`` by default, ``unisolated``,
    ``{kind: remote, url: ...}``). A run the sandbox itself botched scores 0 with a warning; when
    every run of the call did, the sandbox is broken and this raises ``SandboxError``.
    """
    runner = get_executor(executor)
    runner.check()
    scores = [0.0] * len(completions)
    jobs, rows = [], []
    for row, (completion, test) in enumerate(zip(completions, tests)):
        cases = split_tests(test)
        if cases:  # nothing to verify against: no credit
            jobs.append(Job(extract_code(str(completion)), cases))
            rows.append(row)
    if not jobs:
        return scores
    results = runner.run_many(jobs, Limits(timeout=timeout, memory_mb=memory_mb), max_workers=max_workers)
    broken = [r for r in results if r.sandbox_failed]
    if broken and len(broken) == len(results):
        raise SandboxError(f"the {runner.name} executor failed on all {len(results)} programs, e.g.: {broken[0].error}")
    for row, result in zip(rows, results):
        if result.sandbox_failed:
            log.warning("sandbox failure scored 0 (row %d): %s", row, result.error)
        scores[row] = result.pass_rate if partial_credit else float(result.all_passed)
    return scores


def code_pass_rate_reward(
    prompts: Sequence[str], completions: Sequence[str], tests: Sequence[Any], **kwargs: Any
) -> list[float]:
    """``code_tests_reward`` with ``partial_credit``: the share of the row's tests that passed."""
    kwargs["partial_credit"] = True
    return code_tests_reward(prompts, completions, tests, **kwargs)


def _check_executor(executor: Any = None, **_: Any) -> None:
    """Config-time check (``GRPOModule`` calls ``reward.check(**kwargs)``): raise
    ``SandboxUnavailable`` now, not after the model has loaded, when the executor cannot run."""
    get_executor(executor).check()


code_tests_reward.check = _check_executor  # type: ignore[attr-defined]
code_pass_rate_reward.check = _check_executor  # type: ignore[attr-defined]
