"""Verifiable rewards and the code executors: answers, format, per-test verdicts, partial credit,
what a test can do with the solution's objects, time limits, failing closed, the remote executor,
and a GRPO run with a code reward end to end. Attacks on the sandbox: ``test_sandbox_attacks.py``."""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from brainstacks_pl.rewards import (
    SandboxUnavailable,
    code_pass_rate_reward,
    code_tests_reward,
    format_reward,
    math_exact_match,
    math_operands_reward,
    run_sandboxed,
)
from brainstacks_pl.sandbox import (
    Job,
    Limits,
    LocalIsolatedExecutor,
    RemoteExecutor,
    SandboxError,
    UnisolatedExecutor,
    get_executor,
    split_tests,
)
from brainstacks_pl.sandbox import local as local_module
from brainstacks_pl.sandbox.server import make_server

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the isolated executor needs Linux namespaces"
)


# ---------------------------------------------------------------------- math and format
def test_math_exact_match_and_format():
    # No credit without a "####" line: evaluate's math_gen (extract: hash) would score it wrong too.
    completions = ["9 x 19 = 171.\n#### 171", "the area is 171", "#### 170", ""]
    assert math_exact_match([""] * 4, completions, answer=["171"] * 4) == [1.0, 0.0, 0.0, 0.0]
    assert format_reward([""] * 4, completions) == [1.0, 0.0, 1.0, 0.0]


def test_operands_reward_counts_the_prompt_numbers_used_before_the_answer():
    prompt = "Sara has 47 eggs and buys 15 more. How many eggs does Sara have now?"
    completions = [
        "Sara has 47 + 15 = 62 eggs.\n#### 62",
        "Sara has 44 + 15 = 59 eggs.\n#### 59",
        "#### 47 15",
        "no numbers",
    ]
    assert math_operands_reward([prompt] * 4, completions) == [1.0, 0.5, 0.0, 0.0]
    assert math_operands_reward(["no numbers here"], ["1 + 1"]) == [0.0]


# ---------------------------------------------------------------------- code rewards
def test_code_reward_passes_and_fails_on_tests():
    good = "```python\ndef add_2(x):\n    return x + 2\n```"
    bad = "def add_2(x):\n    return x - 2"
    broken = "def add_2(x) return"
    assert code_tests_reward(["p"] * 3, [good, bad, broken], tests=["assert add_2(1) == 3"] * 3) == [1.0, 0.0, 0.0]
    assert code_tests_reward(["p"], [good], tests=[""]) == [0.0], "no tests: no credit"
    assert code_tests_reward(["p"], [good], tests=[[]]) == [0.0]


def test_split_tests_one_per_assert_with_its_setup():
    assert split_tests("x = [1]; assert x == [1]\nassert len(x) == 1\nprint('after')") == (
        "x = [1]\nassert x == [1]\n",
        "assert len(x) == 1\nprint('after')\n",
    )
    assert split_tests("def check(f):\n    assert f(1)\ncheck(g)") == ("def check(f):\n    assert f(1)\ncheck(g)",), (
        "no top-level assert: one test"
    )
    assert split_tests(["assert a", "", "assert b"]) == ("assert a", "assert b")
    assert split_tests("assert (") == ("assert (",) and split_tests(None) == ()


def test_partial_credit_is_the_share_of_tests_that_passed():
    tests = "assert half(4) == 2\nassert half(3) == 1.5\nassert half(0) == 0\nassert half(-2) == -1"
    floor_div = "def half(x):\n    return x // 2"  # fails only half(3)
    right = "def half(x):\n    return x / 2"
    assert code_tests_reward(["p"] * 2, [floor_div, right], tests=[tests] * 2) == [0.0, 1.0]
    assert code_tests_reward(["p"] * 2, [floor_div, right], tests=[tests] * 2, partial_credit=True) == [0.75, 1.0]
    assert code_pass_rate_reward(["p"] * 2, [floor_div, right], tests=[tests] * 2) == [0.75, 1.0]
    as_list = ["assert half(4) == 2", "assert half(3) == 1.5"]
    assert code_pass_rate_reward(["p"], [floor_div], tests=[as_list]) == [0.5]


def test_tests_see_the_solutions_names_objects_generators_and_exceptions():
    solution = """
import math
LIMIT = 10
class Stack:
    def __init__(self):
        self.items = []
    def push(self, x):
        self.items.append(x)
        return self
    def pop(self):
        if not self.items:
            raise IndexError("pop from empty stack")
        return self.items.pop()
    def __len__(self):
        return len(self.items)
    def __eq__(self, other):
        return isinstance(other, Stack) and self.items == other.items
def squares(n):
    for i in range(n):
        yield i * i
def parse(s):
    if not s:
        raise ValueError("empty")
    return {"n": int(s), "t": (1, 2), "b": b"x", "s": {1}, "f": float("inf"), "big": 2 ** 200}
"""
    tests = [
        "assert LIMIT == 10 and math.sqrt(16) == 4",
        "s = Stack().push(1).push(2)\nassert len(s) == 2 and s.pop() == 2 and s.items == [1]",
        "assert Stack().push(3) == Stack().push(3)\nassert Stack().push(3) != Stack().push(4)",
        "assert list(squares(4)) == [0, 1, 4, 9]\nassert sum(x for x in squares(3)) == 5",
        "try:\n    Stack().pop()\nexcept IndexError as e:\n"
        "    assert 'empty' in str(e)\nelse:\n    raise AssertionError('no error')",
        "assert parse('7') == {'n': 7, 't': (1, 2), 'b': b'x', 's': {1}, 'f': float('inf'), 'big': 2 ** 200}",
        "assert isinstance(Stack(), Stack) and not isinstance(3, Stack)",
    ]
    result = get_executor().run(Job(solution, tuple(tests)), Limits(timeout=10))
    assert result.complete and [t.error for t in result.tests] == [None] * len(tests), result


def test_values_too_deep_to_copy_stay_in_the_solution_as_handles():
    code = (
        "cycle = []\ncycle.append(cycle)\ndeep = 1\nfor _ in range(100):\n"
        "    deep = [deep]\nBIG = 10 ** 5000\ndef f():\n    return deep"
    )
    tests = (
        "assert len(cycle) == 1 and len(cycle[0]) == 1",
        "x = f()\nfor _ in range(100):\n    x = x[0]\nassert x == 1",
        "assert BIG % 7 == pow(10, 5000, 7)",
    )
    result = get_executor().run(Job(code, tests), Limits(timeout=10))
    assert result.all_passed, result


def test_an_object_claiming_to_equal_everything_does_not_pass():
    liar = (
        "class Any:\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = object.__hash__\ndef add_2(x):\n    return Any()"
    )
    tests = ["assert add_2(1) == 3", "assert 3 == add_2(1)", "assert add_2(1) in [3]"]
    assert code_pass_rate_reward(["p"], [liar], tests=[tests]) == [0.0]


def test_a_solution_that_hangs_scores_what_passed_before_the_time_limit():
    code = "def f(x):\n    if x == 2:\n        while True:\n            pass\n    return x"
    started = time.monotonic()
    scores = code_pass_rate_reward(
        ["p"], [code], tests=[["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"]], timeout=1.0
    )
    assert scores == [pytest.approx(1 / 3)] and time.monotonic() - started < 8
    assert code_tests_reward(["p"], ["def f():\n    while True: pass"], tests=["f()"], timeout=1.0) == [0.0]


def test_sandbox_kills_a_hanging_program_at_the_time_limit():
    started = time.monotonic()
    result = run_sandboxed("import time\nwhile True:\n    time.sleep(0.01)", timeout=1.0)
    assert result.timed_out and not result.passed and result.returncode is None and time.monotonic() - started < 8


def test_run_sandboxed_reports_status_and_output():
    result = run_sandboxed("import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)")
    assert (result.returncode, result.stdout, result.stderr, result.passed) == (3, "out\n", "err\n", False)
    failed = run_sandboxed("def f():\n    1 / 0\nf()")
    assert (
        failed.returncode == 1
        and failed.stderr.startswith("Traceback")
        and 'File "/tmp/solution.py", line 3' in failed.stderr
    )
    assert run_sandboxed("open('inside.txt', 'w').write('ok')\nprint(open('inside.txt').read())").stdout == "ok\n"
    assert run_sandboxed("print('x' * 100000)", max_output=100).stdout == "x" * 99 + "\n"


def test_sandbox_has_no_network_and_a_read_only_file_system(tmp_path):
    outside = tmp_path / "outside.txt"
    code = (
        "import socket, os\n"
        "try:\n    socket.create_connection(('127.0.0.1', 9), timeout=2)\n"
        "except OSError as e:\n    print('net', e.errno)\n"
        f"try:\n    open({str(outside)!r}, 'w')\nexcept OSError as e:\n    print('write', type(e).__name__)\n"
        "try:\n    open('/usr/x', 'w')\nexcept OSError as e:\n    print('usr', type(e).__name__)\n"
    )
    result = run_sandboxed(code)
    assert result.returncode == 0 and result.stdout.splitlines() == [
        "net 101",
        "write FileNotFoundError",
        "usr OSError",
    ], result
    assert not outside.exists()


# ---------------------------------------------------------------------- executors: configuration and failing closed
def test_get_executor_settings():
    assert isinstance(get_executor(), LocalIsolatedExecutor) and get_executor() is get_executor("local")
    assert isinstance(get_executor("unisolated"), UnisolatedExecutor)
    remote = get_executor({"kind": "remote", "url": "http://127.0.0.1:1"})
    assert isinstance(remote, RemoteExecutor) and remote.url == "http://127.0.0.1:1"
    custom = get_executor({"class_path": "brainstacks_pl.sandbox.UnisolatedExecutor", "init_args": {}})
    assert isinstance(custom, UnisolatedExecutor)
    with pytest.raises(ValueError, match="unknown executor"):
        get_executor("docker")


def test_missing_isolation_fails_closed_and_names_the_opt_in(monkeypatch):
    monkeypatch.setattr(
        local_module.shutil,
        "which",
        lambda tool, path=None: None if tool == "unshare" else shutil.which(tool, path=path),
    )
    executor = LocalIsolatedExecutor()
    with pytest.raises(SandboxUnavailable, match=r"`unshare`.*`executor: unisolated`"):
        executor.check()
    with pytest.raises(SandboxUnavailable, match="executor: unisolated"):
        code_tests_reward(["p"], ["def f(): return 1"], tests=["assert f() == 1"], executor=executor)


def test_a_sandbox_that_does_not_work_fails_closed(monkeypatch):
    executor = LocalIsolatedExecutor()
    executor._find_tools()
    executor._tools["mount"] = shutil.which("false")  # every mount fails
    with pytest.raises(SandboxUnavailable, match=r"does not work on this machine.*false -a -T.*executor: unisolated"):
        executor.check()
    from brainstacks_pl.modules.grpo import GRPOModule

    with pytest.raises(SandboxUnavailable, match="executor: unisolated"):  # at config time, before any model loads
        GRPOModule(
            "code",
            rewards=[
                {
                    "function": "brainstacks_pl.rewards.code_tests_reward",
                    "kwargs": {"executor": {"class_path": "test_rewards.BrokenExecutor"}},
                }
            ],
        )


class BrokenExecutor(LocalIsolatedExecutor):
    def check(self):
        raise SandboxUnavailable("no namespaces here. Opt in with `executor: unisolated`")


def test_the_unisolated_executor_warns_on_every_run_and_still_needs_every_test(caplog):
    with caplog.at_level(logging.WARNING, logger="brainstacks_pl.sandbox.local"):
        scores = code_tests_reward(
            ["p"] * 2,
            ["def f():\n    return 1", "import os\ndef f():\n    return 2\nos._exit(0)"],
            tests=["assert f() == 1"] * 2,
            executor="unisolated",
            max_workers=1,
        )
    assert scores == [1.0, 0.0]
    assert sum("WITHOUT isolation" in r.getMessage() for r in caplog.records) == 2


# ---------------------------------------------------------------------- the remote executor
@pytest.fixture
def service(monkeypatch):
    monkeypatch.setenv("BRAINSTACKS_TEST_TOKEN", "s3cret")
    server = make_server("127.0.0.1", 0, get_executor("local"), token="s3cret", workers=2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_remote_executor_runs_a_group_through_the_service(service):
    spec = {"kind": "remote", "url": service, "token_env": "BRAINSTACKS_TEST_TOKEN"}
    get_executor(spec).check()
    tests = "assert add_2(1) == 3\nassert add_2(-2) == 0"
    completions = ["def add_2(x):\n    return x + 2", "def add_2(x):\n    return 3", "import sys\nsys.exit(0)"]
    assert code_pass_rate_reward(["p"] * 3, completions, tests=[tests] * 3, executor=spec) == [1.0, 0.5, 0.0]
    result = get_executor(spec).run(Job("print('hi')"), Limits(timeout=2))
    assert result.stdout == "hi\n" and result.returncode == 0 and result.executor == "remote:local"


def test_remote_executor_without_the_token_is_refused(service):
    anonymous = RemoteExecutor(service, token_env="NO_SUCH_VARIABLE")
    with pytest.raises(SandboxUnavailable, match="401"):
        anonymous.check()
    with pytest.raises(SandboxError, match="401"):
        anonymous.run(Job("print(1)"))
    with pytest.raises(SandboxUnavailable, match="executor: unisolated"):
        RemoteExecutor("http://127.0.0.1:9").check()  # nothing listens on the discard port


# ---------------------------------------------------------------------- GRPO with a code reward, end to end
from test_grpo import grpo_args, sft_run  # noqa: E402,F401  (the tiny SFT run GRPO continues)

CALLS: list[list[float]] = []


def counting_code_reward(prompts, completions, tests, **kwargs):
    """``code_tests_reward`` through the isolated executor, with each call's scores recorded."""
    scores = code_tests_reward(prompts, completions, tests, **kwargs)
    CALLS.append(scores)
    return scores


counting_code_reward.check = code_tests_reward.check


def test_grpo_with_a_code_reward_runs_end_to_end_in_the_sandbox(sft_run, tmp_path):  # noqa: F811
    """``configs/grpo_code_demo.yaml`` (its reward wrapped to count calls) on the tiny SFT run."""
    from brainstacks_pl.cli import cli_main
    from brainstacks_pl.storage import Manifest

    run_dir = tmp_path / "run"
    shutil.copytree(sft_run, run_dir)
    CALLS.clear()
    args = grpo_args(
        run_dir,
        "--model.domain",
        "math",
        "--trainer.max_epochs",
        "1",
        "--model.rewards=[{function: test_rewards.counting_code_reward, "
        "kwargs: {timeout: 2.0, partial_credit: true, executor: local}}]",
    )
    args[args.index("--config") + 1] = str(Path(__file__).resolve().parents[1] / "configs" / "grpo_code_demo.yaml")
    cli_main(args)
    record = Manifest.load(run_dir).stacks[-1]
    assert record.phase == "grpo" and record.domain == "math"
    assert len(CALLS) >= 2 and all(len(c) > 0 and all(0.0 <= s <= 1.0 for s in c) for c in CALLS)
