"""One answer-extraction rule for GRPO rewards and evaluation (brainstacks_pl/answers.py)."""

from __future__ import annotations

import pytest

from brainstacks_pl.answers import answers_match, extract_answer, final_answer
from brainstacks_pl.evaluation.run_eval import is_solved
from brainstacks_pl.evaluation.tasks import TaskExample, TaskSpec
from brainstacks_pl.rewards import math_exact_match


@pytest.mark.parametrize(
    "text, hashed, last",
    [
        ("Cost: 7 x 3 = 21. Change: 100 - 21 = 79.\n#### 79", "79", "79"),
        ("#### 1,234 apples", "1234", "1234"),
        ("It is $2,500.00 in total.", None, "2500"),
        ("Dose = 10 mg/kg x 20 kg = 200 mg.", None, "200"),
        ("The answer is -3.5.", None, "-3.5"),
        ("no number here", None, None),
        ("#### 5\nwait, no:\n#### 6", "6", "6"),
    ],
)
def test_number_extraction(text, hashed, last):
    assert extract_answer(text, "hash") == hashed
    assert extract_answer(text, "last_number") == last


@pytest.mark.parametrize(
    "text, letter",
    [
        ("Answer: B", "B"),
        ("The answer is (C).", "C"),
        ("D. because it rains", "D"),
        ("A) yes", "A"),
        ("I pick (E)", "E"),
        ("I think so", None),
        ("answer: c", None),
        ("B", "B"),
    ],
)
def test_choice_letter_extraction(text, letter):
    assert extract_answer(text, "letter") == letter


@pytest.mark.parametrize(
    "text, answer",
    [
        ("ekab", "ekab"),
        ("<answer>olleh</answer>", "olleh"),
        ("thinking <answer>1</answer> then <answer> 2 </answer>", "2"),
        ("3 + 4 = 7\n#### 7", "7"),
        ("The final answer to this arithmetic problem is 15.", "15"),
        ("Let me think.\nAnswer: **42**", "42"),
        ("The answer is 'olleh'.", "olleh"),
        ("1.5.", "1.5"),
        ("   \n ", None),
    ],
)
def test_final_answer_does_not_need_a_format_only_stacks_know(text, answer):
    assert final_answer(text) == answer


def test_answers_match_numbers_numerically_and_letters_case_blind():
    assert answers_match("79", "79.0", "hash") and answers_match("1000", "1,000", "last_number")
    assert not answers_match(None, "3", "hash") and not answers_match("4", "3", "last_number")
    assert answers_match("B", "b", "letter") and not answers_match("A", "B", "letter")


@pytest.mark.parametrize("completion", ["#### 5\nno, recount:\n#### 6", "6", "#### 6 #### 5", "the sum is 6"])
def test_grpo_reward_and_evaluate_judge_a_completion_alike(completion):
    """The bug this module fixes: the reward took the last "####", evaluate the first."""
    task = TaskSpec(name="m", domain="math", type="generation", path="m.jsonl", extract="hash")
    example = TaskExample("q", "6")
    scored = is_solved(completion, extract_answer(completion, "hash"), example, task)
    assert math_exact_match(["q"], [completion], answer=["6"]) == [float(scored)]
