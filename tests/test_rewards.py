"""Verifiable rewards and the code sandbox: answers, format, tests, time limits, no network, no stray writes."""

from __future__ import annotations

import socket
import time

import pytest

from brainstacks_pl.rewards import code_tests_reward, extract_answer, format_reward, math_exact_match, math_operands_reward, run_sandboxed


def test_extract_answer_prefers_hashes_then_the_last_number():
    assert extract_answer("3 + 4 = 7.\n#### 7") == 7.0
    assert extract_answer("costs $1,250 then 3") == 3.0
    assert extract_answer("#### $1,250.50") == 1250.5
    assert extract_answer("no number") is None and extract_answer(None) is None and extract_answer(12) == 12.0


def test_math_exact_match_and_format():
    completions = ["9 x 19 = 171.\n#### 171", "the area is 171", "#### 170", ""]
    assert math_exact_match([""] * 4, completions, answer=["171"] * 4) == [1.0, 1.0, 0.0, 0.0]
    assert format_reward([""] * 4, completions) == [1.0, 0.0, 1.0, 0.0]


def test_operands_reward_counts_the_prompt_numbers_used_before_the_answer():
    prompt = "Sara has 47 eggs and buys 15 more. How many eggs does Sara have now?"
    completions = ["Sara has 47 + 15 = 62 eggs.\n#### 62", "Sara has 44 + 15 = 59 eggs.\n#### 59", "#### 47 15", "no numbers"]
    assert math_operands_reward([prompt] * 4, completions) == [1.0, 0.5, 0.0, 0.0]
    assert math_operands_reward(["no numbers here"], ["1 + 1"]) == [0.0]


def test_code_reward_passes_and_fails_on_tests():
    good = "```python\ndef add_2(x):\n    return x + 2\n```"
    bad = "def add_2(x):\n    return x - 2"
    broken = "def add_2(x) return"
    assert code_tests_reward(["p"] * 3, [good, bad, broken], tests=["assert add_2(1) == 3"] * 3) == [1.0, 0.0, 0.0]
    assert code_tests_reward(["p"], [good], tests=[""]) == [0.0], "no tests: no credit"


def test_sandbox_kills_a_hanging_program_at_the_time_limit():
    started = time.monotonic()
    result = run_sandboxed("import time\nwhile True:\n    time.sleep(0.01)", timeout=1.0)
    assert result.timed_out and not result.passed and time.monotonic() - started < 10
    assert code_tests_reward(["p"], ["def f():\n    while True: pass"], tests=["f()"], timeout=1.0) == [0.0]


def test_sandbox_refuses_the_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    try:
        for code in (
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
            f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))",
            "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)",
        ):
            result = run_sandboxed(code, timeout=5.0)
            assert result.returncode != 0 and "network access is disabled" in result.stderr
        with pytest.raises(socket.timeout):
            server.accept()  # nothing ever reached the listening socket
    finally:
        server.close()


def test_sandbox_confines_writes_and_subprocesses(tmp_path):
    outside = tmp_path / "outside.txt"
    result = run_sandboxed(f"open({str(outside)!r}, 'w').write('x')")
    assert result.returncode != 0 and not outside.exists()
    assert run_sandboxed("open('inside.txt', 'w').write('ok')\nprint(open('inside.txt').read())").stdout.strip() == "ok"
    assert "disabled" in run_sandboxed("import os\nos.system('echo hi')").stderr
    assert "disabled" in run_sandboxed("import subprocess\nsubprocess.run(['echo', 'hi'])").stderr
