"""Write the bundled alignment demo data (deterministic; rerun to regenerate byte-identical files).

chat_preferences.jsonl  {prompt, chosen, rejected}: the chat domain's conversations; chosen is
                        the helpful answer, rejected a dismissive or off-topic one
math_rl.jsonl           {prompt, answer, level}: word problems in the math domain's style (answer =
                        the final number; level 1-3 = operations needed, ``MATH_LEVELS``), weighted
                        towards level 1 (``MATH_RL_MIX``); prompts that appear in math.csv are left out
code_rl.jsonl           {prompt, tests}: small function tasks in the code domain's style with
                        assert-based tests for ``rewards.code_tests_reward``

python scripts/make_demo_alignment_data.py
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_demo_data import _chat_pair, make_math  # noqa: E402  (the SFT demo's generators)

DISMISSIVE = [
    "I don't know. Ask someone else.",
    "Why are you asking me that?",
    "Not my problem.",
    "Figure it out yourself.",
    "That is a boring question.",
    "No.",
]


def chat_preferences(r: random.Random, n: int) -> list[dict]:
    rows, seen = [], set()
    for _ in range(n * 200):  # the chat generator has ~280 distinct prompts
        if len(rows) == n:
            return rows
        turns = _chat_pair(r)
        prompt = "\n".join(f"{role.capitalize()}: {text}" for role, text in turns[:-1])
        if prompt in seen:
            continue
        seen.add(prompt)
        chosen = turns[-1][1]
        if r.random() < 0.5:
            rejected = r.choice(DISMISSIVE)
        else:  # a fluent answer to a different question
            other = _chat_pair(r)[-1][1]
            if other == chosen:
                continue
            rejected = other
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    raise RuntimeError(f"only {len(rows)} distinct chat prompts, wanted {n}")


# The math generator's ten problem templates, by how many operations the answer takes: a single
# addition, subtraction or division (1), a single product or percentage (2), two steps (3).
MATH_LEVELS = (
    (1, re.compile(r"buys \d+ more\.|gave away|shared equally")),
    (2, re.compile(r"boxes with|% of|rectangle|train travels")),
    (3, re.compile(r"pays with|average|pages a day")),
)
MATH_RL_MIX = {1: 210, 2: 120, 3: 70}
"""Rows per level in ``math_rl.jsonl``: GRPO learns from groups where some samples are right, and
the 1M-parameter demo policy is right mostly on single additions and subtractions."""


def math_level(question: str) -> int:
    for level, pattern in MATH_LEVELS:
        if pattern.search(question):
            return level
    raise ValueError(f"unknown math template: {question!r}")


def math_rl(r: random.Random, mix: dict[int, int], exclude: set[str]) -> list[dict]:
    rows, seen, wanted = [], set(exclude), dict(mix)
    while any(wanted.values()):
        question, solution = make_math(r)
        level = math_level(question)
        if question in seen or not wanted[level]:
            continue
        seen.add(question)
        wanted[level] -= 1
        rows.append({"prompt": question, "answer": solution.rsplit("####", 1)[1].strip(), "level": level})
    return rows


def code_rl(r: random.Random, n: int) -> list[dict]:
    makers = [
        lambda k: (
            f"Create a Python function that adds {k} to a number.",
            f"assert add_{k}(1) == {1 + k}\nassert add_{k}(-{k}) == 0",
        ),
        lambda k: (
            f"Write a Python function that multiplies every number in a list by {k}.",
            f"assert times_{k}([1, 2]) == [{k}, {2 * k}]\nassert times_{k}([]) == []",
        ),
        lambda k: (
            f"Write a Python function that checks if a number is divisible by {k}.",
            f"assert divisible_by_{k}({3 * k})\nassert not divisible_by_{k}({3 * k + 1})",
        ),
        lambda k: (
            f"Write a Python function that repeats a string {k} times.",
            f"assert repeat_{k}('ab') == 'ab' * {k}\nassert repeat_{k}('') == ''",
        ),
        lambda k: (
            f"Write a Python function that returns the first {k} items of a list.",
            f"assert first_{k}(list(range(20))) == list(range({k}))",
        ),
    ]
    rows, seen = [], set()
    while len(rows) < n:
        prompt, tests = r.choice(makers)(r.randint(2, 19))
        if prompt not in seen:
            seen.add(prompt)
            rows.append({"prompt": prompt, "tests": tests})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "brainstacks_pl" / "data" / "demo"
    )
    parser.add_argument("--seed", type=int, default=4321)
    args = parser.parse_args(argv)
    with open(args.out / "math.csv", encoding="utf-8", newline="") as f:
        sft_questions = {row["question"] for row in csv.DictReader(f)}
    _write_jsonl(args.out / "chat_preferences.jsonl", chat_preferences(random.Random(args.seed), 240))
    _write_jsonl(args.out / "math_rl.jsonl", math_rl(random.Random(args.seed + 1), MATH_RL_MIX, sft_questions))
    _write_jsonl(args.out / "code_rl.jsonl", code_rl(random.Random(args.seed + 2), 80))
    for name in ("chat_preferences.jsonl", "math_rl.jsonl", "code_rl.jsonl"):
        print(f"{name}: {(args.out / name).stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
