"""Verifiable rewards for GRPO: plain callables ``reward(prompts, completions, **columns) -> list[float]``.

Every reward gets the prompts, the decoded completions (one per sample, a prompt repeated once
per group member) and every other column of the prompt data as a keyword list of the same
length (``answer``, ``tests``, ...). It must return one finite float per completion; the GRPO
module checks that and says which function broke the rule.

- ``math_exact_match``: 1 when the completion's final number equals the reference answer's
  (the number after ``####``, else the last number in the text).
- ``format_reward``: 1 when the completion ends its answer with a ``#### <number>`` line.
- ``math_operands_reward``: the share of the prompt's numbers that the completion's working
  uses (a dense, verifiable step reward: a policy that never gets the final number right can
  still be ranked by whether it starts from the right quantities).
- ``code_tests_reward``: 1 when the completion's code passes the row's ``tests`` (plain
  ``assert`` statements) in ``run_sandboxed``.

``run_sandboxed`` runs untrusted code in a separate ``python -I -B`` process with a wall-clock
time limit (the whole process group is killed), CPU / memory / file-size rlimits, a fresh temp
directory as cwd and HOME, a scrubbed environment (proxies point nowhere), and an audit hook
(``sys.addaudithook``, which cannot be removed from inside) that refuses sockets, subprocesses
and file writes outside the temp directory. It is a guard against accidents of a model's code
(loops, stray writes, network calls), not a security boundary against a determined attacker:
use a container for that.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = [
    "SandboxResult",
    "code_tests_reward",
    "extract_answer",
    "extract_code",
    "format_reward",
    "math_exact_match",
    "math_operands_reward",
    "run_sandboxed",
]

_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_FINAL_RE = re.compile(r"####\s*(-?\$?\d[\d,]*(?:\.\d+)?)")
_FORMAT_RE = re.compile(r"####\s*-?\$?\d[\d,]*(?:\.\d+)?\s*$")
_FENCE_RE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


# --------------------------------------------------------------------------- math


def _to_number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", ""))
    except ValueError:
        return None


def extract_answer(text: Any) -> float | None:
    """The final numeric answer: the number after the last ``####``, else the last number in the text."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    text = str(text)
    final = _FINAL_RE.findall(text)
    if final:
        return _to_number(final[-1])
    numbers = _NUMBER_RE.findall(text)
    return _to_number(numbers[-1]) if numbers else None


def math_exact_match(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[Any], **_: Any) -> list[float]:
    """1.0 where the completion's final number equals the reference ``answer``'s (to 1e-6), else 0.0."""
    scores = []
    for completion, reference in zip(completions, answer):
        got, want = extract_answer(completion), extract_answer(reference)
        scores.append(float(got is not None and want is not None and abs(got - want) <= 1e-6 * max(1.0, abs(want))))
    return scores


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


# --------------------------------------------------------------------------- sandbox

# Runs first in the child: an audit hook (irremovable) refusing sockets, subprocesses and writes
# outside the working directory, then the program itself as __main__.
_GUARD = r"""
import os, sys
_root = os.path.realpath(os.getcwd())
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def _guard(event, args):
    if event.startswith("socket.") and event != "socket.gethostname":
        raise PermissionError("network access is disabled in the reward sandbox")
    if event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "pty.spawn", "ctypes.dlopen"):
        raise PermissionError(f"{event} is disabled in the reward sandbox")
    if event == "open" and len(args) >= 3:
        path, mode, flags = args[0], args[1], args[2]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & _WRITE)
        if writing and isinstance(path, (str, bytes)):
            target = os.path.realpath(os.fsdecode(path))
            if target != _root and not target.startswith(_root + os.sep):
                raise PermissionError(f"writing {target} is disabled in the reward sandbox")
    if event in ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "shutil.rmtree") and args:
        target = os.path.realpath(os.fsdecode(args[0])) if isinstance(args[0], (str, bytes)) else _root
        if target != _root and not target.startswith(_root + os.sep):
            raise PermissionError(f"{event} outside the sandbox directory is disabled")
sys.addaudithook(_guard)
_path = sys.argv[1]
sys.argv = sys.argv[1:]
with open(_path, encoding="utf-8") as _f:
    _code = compile(_f.read(), _path, "exec")
del _f
exec(_code, {"__name__": "__main__", "__file__": _path, "__builtins__": __builtins__})
"""


@dataclass
class SandboxResult:
    returncode: int | None
    """Exit status (None when killed for the time limit)."""
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return not self.timed_out and self.returncode == 0


def _limits(cpu_seconds: int, memory_bytes: int, file_bytes: int):
    def apply() -> None:  # runs in the child between fork and exec
        import resource

        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        if memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    return apply


def run_sandboxed(code: str, timeout: float = 5.0, memory_mb: int = 1024, max_output: int = 10_000) -> SandboxResult:
    """Run ``code`` as a script in a confined child process (see the module docstring)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="brainstacks-reward-") as tmp:
        script = os.path.join(tmp, "program.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(code)
        dead_proxy = "http://127.0.0.1:9"  # the discard port: nothing answers
        env = {
            "PATH": os.defpath, "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8",
            "http_proxy": dead_proxy, "https_proxy": dead_proxy, "HTTP_PROXY": dead_proxy, "HTTPS_PROXY": dead_proxy,
            "all_proxy": dead_proxy, "ALL_PROXY": dead_proxy, "no_proxy": "", "NO_PROXY": "",
        }
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", "-c", _GUARD, script],
            cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, preexec_fn=_limits(int(math.ceil(timeout)) + 1, memory_mb << 20, 16 << 20),
        )
        try:
            out, err = proc.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
            timed_out = True
    return SandboxResult(
        returncode=None if timed_out else proc.returncode,
        timed_out=timed_out,
        stdout=out.decode("utf-8", "replace")[-max_output:],
        stderr=err.decode("utf-8", "replace")[-max_output:],
        seconds=time.monotonic() - started,
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
    max_workers: int = 2,
    **_: Any,
) -> list[float]:
    """1.0 where the completion's code followed by the row's ``tests`` exits cleanly in ``run_sandboxed``.

    A completion that hangs (time limit), touches the network, writes outside its directory or
    fails a test scores 0.0. ``tests`` is a string of Python (asserts) or a list of such strings.
    """

    def score(item: tuple[str, Any]) -> float:
        completion, test = item
        test_code = "\n".join(test) if isinstance(test, (list, tuple)) else str(test or "")
        if not test_code.strip():
            return 0.0  # nothing to verify against: no credit
        return float(run_sandboxed(extract_code(completion) + "\n\n" + test_code + "\n", timeout=timeout).passed)

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        return list(pool.map(score, zip(completions, tests)))
