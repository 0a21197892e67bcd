"""The answer in a model's completion: one set of rules for training rewards and evaluation.

GRPO rewards (``rewards.py``, ``reasoning_gym_tasks.py``) and ``brainstacks evaluate``
(``evaluation/``) both extract through ``extract_answer(text, method)``, so a policy is
optimised for exactly the answer that evaluation scores. Methods:

``hash``
    The number after the *last* ``####`` (GSM8K style; the demo's math format), normalised
    (``"1,000"`` -> ``"1000"``); None without one. The last, because a completion that
    corrects itself ("#### 5 ... no: #### 6") means its final line.
``last_number``
    The last number in the text (sentence dots are not decimals).
``letter``
    A multiple-choice letter: "Answer: B", "the answer is (C)", a leading "D." / "D)" / "D",
    or "(E)" anywhere, in that order.
``final``
    The final answer of free text, for scorers that judge the answer string themselves
    (``reasoning-gym``'s ``score_answer``). It does not depend on a format only trained stacks
    know, so the base model is judged fairly: the content of the last ``<answer>...</answer>``
    (reasoning-gym's own convention) if any; else the rest of the line after the last ``####``;
    else the last non-empty line, without a leading "The (final) answer ... is" / "Answer:" phrase,
    surrounding quotes, bold marks or a trailing period.
``exact``
    The whole completion, stripped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

__all__ = [
    "EXTRACTORS",
    "answers_match",
    "clean_number",
    "extract_answer",
    "final_answer",
    "final_number",
]

NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"
_HASH_RE = re.compile(r"####\s*(" + NUMBER + ")")
_NUMBER_RE = re.compile(NUMBER)
_TAG_RE = re.compile(r"<answer>\s?(.*?)\s?</answer>", re.DOTALL)
_LEAD_RE = re.compile(r"^(?:.*?\banswer\b[^:]*?\bis\b:?|.*?\banswer\s*:)\s*", re.IGNORECASE)
_LETTER_RES = [
    re.compile(r"\b(?i:answer|option|choice)\s*(?i:is)?\s*:?\s*\(?([A-Z])\)?(?![A-Za-z])"),  # "The answer is (B)"
    re.compile(r"^\s*\(?([A-Z])(?:[.):]|\s*$)"),  # "B." / "B)" / "(B)" / a lone "B" at the start
    re.compile(r"\(([A-Z])\)"),  # "(B)" anywhere
]


def clean_number(text: str) -> str:
    """A number as canonical text: no thousands commas or dollar sign, integers without ``.0``."""
    value = float(text.replace(",", "").replace("$", ""))
    return str(int(value)) if value == int(value) else str(value)


def _after_last_hash(text: str) -> str | None:
    found = _HASH_RE.findall(text)
    return clean_number(found[-1]) if found else None


def _last_number(text: str) -> str | None:
    found = _NUMBER_RE.findall(text)
    return clean_number(found[-1]) if found else None


def _choice_letter(text: str, letters: str = "ABCDEFGHIJ") -> str | None:
    for pattern in _LETTER_RES:
        for match in pattern.finditer(text):
            if match.group(1) in letters:
                return match.group(1)
    return None


def final_answer(text: str) -> str | None:
    """The ``final`` rule of the module docstring; None for a completion with no text."""
    tagged = _TAG_RE.findall(text)
    if tagged:
        return tagged[-1].strip() or None
    if "####" in text:
        line = text.rsplit("####", 1)[1].strip().splitlines()
        return line[0].strip() if line and line[0].strip() else None
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    answer = _LEAD_RE.sub("", lines[-1], count=1).strip()
    answer = answer.strip("*").strip()
    if answer.endswith(".") and not answer.endswith(".."):
        answer = answer[:-1].rstrip()
    if len(answer) >= 2 and answer[0] == answer[-1] and answer[0] in "\"'`":
        answer = answer[1:-1].strip()
    return answer or None


def final_number(text: str) -> float | None:
    """The ``hash`` answer as a float (the demo's math format); None without one."""
    found = _after_last_hash(text)
    return float(found) if found is not None else None


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "hash": _after_last_hash,
    "last_number": _last_number,
    "letter": _choice_letter,
    "final": final_answer,
    "exact": lambda text: text.strip() or None,
}


def extract_answer(text: str, method: str) -> str | None:
    """Apply one of ``EXTRACTORS`` (hash | last_number | letter | final | exact)."""
    if method not in EXTRACTORS:
        raise ValueError(f"unknown answer extraction {method!r}; choose one of {sorted(EXTRACTORS)}")
    return EXTRACTORS[method](str(text))


def answers_match(predicted: str | None, gold: str, method: str) -> bool:
    """Compare an extracted answer with the gold one (numbers numerically, letters case-blind)."""
    if predicted is None:
        return False
    if method in ("hash", "last_number"):
        try:
            gold_value = float(str(gold).replace(",", "").replace("$", ""))
            return math.isclose(float(predicted), gold_value, rel_tol=0, abs_tol=1e-6)
        except ValueError:
            return False
    if method == "letter":
        return predicted.upper() == str(gold).strip().upper()
    return predicted.strip() == str(gold).strip()
