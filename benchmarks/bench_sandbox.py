"""Cost of running model-written code in the isolated executor, measured side by side.

* per completion: one program + its tests (a small function task of ``demo:code_rl``) in the
  isolated executor vs a bare ``python -c`` subprocess of the same code with the tests appended
  (what a test-by-exit-status reward would run), median over interleaved rounds.
                                                     target: <= 50 ms added per completion
  Also reported: ``python -I -S -c`` (no site-packages: the tightest interpreter start), the
  unisolated executor, and today's (before this change) ``run_sandboxed``, loaded from git.
* a G=16 GRPO group end to end: ``code_tests_reward`` on 16 completions (right, wrong and
  exit-early ones) with the isolated executor and its worker pool vs the reward before this
  change (loaded from git; 2 threads of ``run_sandboxed``).   target: not slower beyond the
  per-completion cost above

Variants run interleaved for ``--rounds`` rounds, so a noisy neighbour slows every variant alike;
the machine's load average is recorded next to the numbers.

    python benchmarks/bench_sandbox.py                 # ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from report_json import write_report  # noqa: E402

from brainstacks_pl.rewards import code_tests_reward  # noqa: E402
from brainstacks_pl.sandbox import Job, Limits, default_workers, get_executor, split_tests  # noqa: E402

TARGET_ADDED_MS = 50.0
BEFORE = "937ced9"  # the commit before the isolated executor: its rewards.py is "today's" reward
SOLUTION = "def add_14(x):\n    return x + 14\n"
TESTS = "assert add_14(1) == 15\nassert add_14(-14) == 0"


def legacy_rewards():
    """``brainstacks_pl/rewards.py`` as of ``BEFORE`` (audit-hook guard, exit-status verdict), or None."""
    try:
        source = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{BEFORE}:brainstacks_pl/rewards.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("legacy_rewards")
    sys.modules["legacy_rewards"] = module  # dataclasses look their module up
    exec(compile(source, "legacy_rewards.py", "exec"), module.__dict__)
    return module


def group_completions() -> tuple[list[str], list[str]]:
    """16 completions of one prompt, as a policy samples them: right, wrong, broken, exit-early."""
    right = "```python\n" + SOLUTION + "```"
    wrong = "```python\ndef add_14(x):\n    return x + 41\n```"
    broken = "def add_14(x) return x"
    exit_early = "def add_14(x):\n    return x\nimport sys\nsys.exit(0)"
    completions = [right] * 6 + [wrong] * 5 + [broken] * 3 + [exit_early] * 2
    return completions, [TESTS] * len(completions)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds per completion variant")
    parser.add_argument("--group-rounds", type=int, default=8, help="interleaved rounds of the G=16 group")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "sandbox.json"))
    args = parser.parse_args()

    isolated, unisolated = get_executor("local"), get_executor("unisolated")
    isolated.check()
    import logging

    logging.getLogger("brainstacks_pl.sandbox.local").setLevel(logging.ERROR)  # the unisolated warning, once per run
    legacy = legacy_rewards()
    script = SOLUTION + "\n" + TESTS + "\n"
    job, limits = Job(SOLUTION, split_tests(TESTS)), Limits(timeout=5.0)

    def bare(*flags: str):
        return lambda: subprocess.run([sys.executable, *flags, "-c", script], capture_output=True, check=True)

    def executor_run(executor):
        def run():
            result = executor.run(job, limits)
            assert result.all_passed, result

        return run

    variants = {
        "python -c (bare subprocess, the reference)": bare(),
        "python -I -S -c (bare, no site-packages)": bare("-I", "-S"),
        "isolated executor": executor_run(isolated),
        "unisolated executor": executor_run(unisolated),
    }
    if legacy is not None:
        variants["run_sandboxed before this change (audit hook)"] = lambda: legacy.run_sandboxed(script)
    for fn in variants.values():  # warm up: page cache, imports
        fn()
    samples = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            samples[name].append(timed(fn))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    reference = medians["python -c (bare subprocess, the reference)"]
    added = medians["isolated executor"] - reference
    added_tight = medians["isolated executor"] - medians["python -I -S -c (bare, no site-packages)"]

    completions, tests = group_completions()
    expected = [1.0] * 6 + [0.0] * 10
    group_variants = {
        f"isolated executor, pool of {default_workers()}": lambda: code_tests_reward([""] * 16, completions, tests)
    }
    if legacy is not None:
        group_variants["reward before this change (2 threads)"] = lambda: legacy.code_tests_reward(
            [""] * 16, completions, tests
        )
    assert code_tests_reward([""] * 16, completions, tests) == expected
    legacy_scores = legacy.code_tests_reward([""] * 16, completions, tests) if legacy is not None else None
    group_samples = {name: [] for name in group_variants}
    for _ in range(args.group_rounds):
        for name, fn in group_variants.items():
            group_samples[name].append(timed(fn))
    group_medians = {name: statistics.median(v) for name, v in group_samples.items()}
    new_group = group_medians[f"isolated executor, pool of {default_workers()}"]
    old_group = group_medians.get("reward before this change (2 threads)")

    result = {
        "benchmark": "sandbox",
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "executor_mode": isolated.mode,
        "rounds": args.rounds,
        "per_completion": {
            "program": "add_14 with 2 asserts (demo:code_rl style)",
            "median_ms": {k: round(v, 2) for k, v in medians.items()},
            "samples_ms": {k: [round(x, 2) for x in v] for k, v in samples.items()},
            "added_ms_vs_python_c": round(added, 2),
            "added_ms_vs_python_I_S_c": round(added_tight, 2),
            "target_added_ms": TARGET_ADDED_MS,
            "verdict": "pass" if added <= TARGET_ADDED_MS else "miss",
        },
        "group_g16": {
            "completions": "6 right, 5 wrong, 3 syntax errors, 2 exit(0) after a wrong solution",
            "scores_isolated": expected,
            "scores_before_this_change": legacy_scores,
            "median_ms": {k: round(v, 2) for k, v in group_medians.items()},
            "samples_ms": {k: [round(x, 2) for x in v] for k, v in group_samples.items()},
            "workers": default_workers(),
            "target": "no slower than before this change beyond 50 ms per completion / workers",
            "verdict": "pass"
            if old_group is None or new_group <= old_group + TARGET_ADDED_MS * 16 / default_workers()
            else "miss",
        },
        "note": "Absolute times depend on the machine and its load (recorded above); "
        "the differences are taken within interleaved rounds.",
    }
    write_report(result, args.out)
    width = max(len(k) for k in list(medians) + list(group_medians))
    print(
        f"per completion, median of {args.rounds} interleaved rounds "
        f"(load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs):"
    )
    for name, value in medians.items():
        print(f"  {name:<{width}}  {value:8.1f} ms")
    print(
        f"  added by the isolated executor: {added:+.1f} ms vs python -c, {added_tight:+.1f} ms vs python -I -S -c  "
        f"(target <= {TARGET_ADDED_MS:.0f}: {result['per_completion']['verdict']})"
    )
    print(f"G=16 group, median of {args.group_rounds} rounds:")
    for name, value in group_medians.items():
        print(f"  {name:<{width}}  {value:8.1f} ms")
    if legacy_scores is not None:
        print(f"  scores before this change: {legacy_scores}  (the exit-early completions scored 1)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
