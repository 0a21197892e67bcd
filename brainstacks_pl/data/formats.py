"""Row adapters: turn one dataset row of a common format into an ``Example(prompt, response)``.

Each adapter is a small pure function ``adapter(row, columns, domain="") -> Example``; ``columns``
maps the format's logical field names to the dataset's column names. Two generic keys work
with every format: ``"prompt"`` names the format's prompt-side column and ``"response"`` its
answer column, so ``{"prompt": "query", "response": "reply"}`` adapts any two-column dataset.

Formats (logical fields, default column names):

- ``alpaca``: ``instruction``, ``input`` (optional), ``output``;
  prompt = instruction + ("\\n\\n" + input if input).
- ``messages``: ``messages`` (a list of ``{"role", "content"}`` or ShareGPT ``{"from", "value"}``);
  the turns before the last assistant turn are the prompt, the last assistant turn is the response.
- ``prompt_completion``: ``prompt``, ``completion`` (``response`` is accepted as the column name).
- ``question_answer``: ``question``, ``answer``.

Every adapter returns the prompt in the compact text form of ``prompts.prompt_text`` (a lone
user turn as plain text, a conversation as role-prefixed lines), and every consumer renders
it with ``prompts.format_prompt``: a user turn looks the same whatever format it came from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from brainstacks_pl.prompts import DEFAULT_PROMPT_TEMPLATE, format_prompt, prompt_text, role_name

__all__ = [
    "DEFAULT_PROMPT_TEMPLATE",
    "Example",
    "FORMATS",
    "detect_format",
    "format_prompt",
    "mapped_column_names",
    "required_columns",
    "strip_chat_tokens",
]


@dataclass
class Example:
    """One supervised example: the model sees ``prompt`` and learns to produce ``response``."""

    prompt: str
    response: str
    domain: str


# --------------------------------------------------------------------------- chat markup

# Specific patterns first (they also eat the role word that follows a turn marker), then the
# generic ``<|...|>`` special-token shape used by ChatML, Llama-3, Phi-3 and friends.
_CHAT_TOKEN_PATTERNS = [
    r"<start_of_turn>(?:user|model|system|assistant)?",  # Gemma
    r"<end_of_turn>",
    r"<\|im_start\|>(?:system|user|assistant|tool)?",  # ChatML (Qwen, ...)
    r"<\|im_end\|>",
    r"<\|start_header_id\|>[^<>]{0,32}<\|end_header_id\|>",  # Llama-3
    r"\[/?INST\]",  # Llama-2 / Mistral
    r"<</?SYS>>",
    r"</?s>",
    r"<(?:bos|eos|pad)>",
    r"<\|(?:system|user|assistant|end|endoftext|begin_of_text|end_of_text|eot_id|eom_id)\|>",
    r"<\|[A-Za-z0-9_]{1,32}\|>",
]
# A run of adjacent markers (with the spaces after each) is one match, replaced once.
_CHAT_TOKEN_RE = re.compile(r"(?:(?:" + "|".join(_CHAT_TOKEN_PATTERNS) + r")[ \t]*)+")
_TRAILING_SPACE_RE = re.compile(r"[ \t]+\n")
_MANY_NEWLINES_RE = re.compile(r"\n{3,}")


def _replace_token(match: re.Match) -> str:
    # A token glued between two words becomes a space ("a</s>b" -> "a b"); elsewhere it vanishes,
    # so a marker at a line start does not shift the indentation of the code that follows it.
    text, start, end = match.string, match.start(), match.end()
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    return " " if not before.isspace() and not after.isspace() else ""


def strip_chat_tokens(text: str) -> str:
    """Remove chat-template markup and collapse the whitespace it leaves behind.

    Indentation inside lines is kept (code stays valid); trailing spaces are removed, runs of
    3+ newlines become one blank line and the result is stripped.
    """
    text = _CHAT_TOKEN_RE.sub(_replace_token, text)
    text = _TRAILING_SPACE_RE.sub("\n", text)
    text = _MANY_NEWLINES_RE.sub("\n\n", text)
    return text.strip()


# --------------------------------------------------------------------------- adapters


def _text(value: Any) -> str:
    """A cell as text: None and NaN (empty CSV cells) become ""."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


_NO_COLUMNS: Mapping[str, str] = MappingProxyType({})  # immutable default: no column mapping

# Per format: logical field -> (generic alias usable in a column mapping, fallback column names).
_FIELDS: dict[str, dict[str, tuple[str | None, tuple[str, ...]]]] = {
    "alpaca": {"instruction": ("prompt", ()), "input": (None, ()), "output": ("response", ())},
    "messages": {"messages": ("prompt", ("conversations", "conversation"))},
    "prompt_completion": {"prompt": (None, ()), "completion": ("response", ("response",))},
    "question_answer": {"question": ("prompt", ()), "answer": ("response", ())},
}
_OPTIONAL = {("alpaca", "input")}


def _column(fmt: str, field: str, columns: Mapping[str, str], available: Iterable[str]) -> str:
    """The dataset column holding logical ``field``: explicit mapping, generic alias, name, fallbacks."""
    generic, fallbacks = _FIELDS[fmt][field]
    if field in columns:
        return columns[field]
    if generic is not None and generic in columns:
        return columns[generic]
    available = set(available)
    return next((c for c in (field, *fallbacks) if c in available), field)


def _get(row: Mapping[str, Any], fmt: str, field: str, columns: Mapping[str, str]) -> Any:
    column = _column(fmt, field, columns, row.keys())
    if column not in row:
        if (fmt, field) in _OPTIONAL:
            return None
        raise ValueError(f"format {fmt!r}: missing column {column!r}; columns found: {sorted(row)}")
    return row[column]


def alpaca(row: Mapping[str, Any], columns: Mapping[str, str] = _NO_COLUMNS, domain: str = "") -> Example:
    """``instruction`` (+ ``"\\n\\n" + input`` when non-empty) -> ``output``."""
    instruction = _text(_get(row, "alpaca", "instruction", columns)).strip()
    extra = _text(_get(row, "alpaca", "input", columns)).strip()
    output = _text(_get(row, "alpaca", "output", columns)).strip()
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    return Example(prompt=prompt_text(prompt), response=output, domain=domain)


def _turn(turn: Any) -> tuple[str, str]:
    if not isinstance(turn, Mapping):
        raise ValueError(f"format 'messages': each turn must be a dict, got {type(turn).__name__}")
    role = turn.get("role", turn.get("from"))
    content = turn.get("content", turn.get("value"))
    if role is None or content is None:
        raise ValueError(f"format 'messages': a turn needs 'role'/'content' (or 'from'/'value'), got {sorted(turn)}")
    return role_name(str(role)), strip_chat_tokens(_text(content))


def messages(row: Mapping[str, Any], columns: Mapping[str, str] = _NO_COLUMNS, domain: str = "") -> Example:
    """Turns before the last assistant turn -> prompt (``prompt_text``); the last assistant turn -> response.

    Chat markup inside a turn's content is stripped here.
    """
    turns = [_turn(t) for t in _get(row, "messages", "messages", columns) or []]
    last = max((i for i, (role, _) in enumerate(turns) if role == "Assistant"), default=None)
    if last is None:
        raise ValueError("format 'messages': the conversation has no assistant turn")
    return Example(prompt=prompt_text(turns[:last]), response=turns[last][1], domain=domain)


def _prompt_response(fmt: str) -> Callable[..., Example]:
    """The adapter of a format with one prompt column and one response column, the two fields
    of ``_FIELDS[fmt]`` in that order (the fallback column names apply, e.g. ``response`` for
    a missing ``completion``)."""
    prompt_field, response_field = _FIELDS[fmt]

    def adapter(row: Mapping[str, Any], columns: Mapping[str, str] = _NO_COLUMNS, domain: str = "") -> Example:
        prompt = _text(_get(row, fmt, prompt_field, columns)).strip()
        response = _text(_get(row, fmt, response_field, columns)).strip()
        return Example(prompt=prompt_text(prompt), response=response, domain=domain)

    adapter.__name__ = adapter.__qualname__ = fmt
    adapter.__doc__ = f"``{prompt_field}`` -> ``{response_field}``."
    return adapter


prompt_completion = _prompt_response("prompt_completion")
question_answer = _prompt_response("question_answer")


Adapter = Callable[..., Example]
FORMATS: dict[str, Adapter] = {
    "alpaca": alpaca,
    "messages": messages,
    "prompt_completion": prompt_completion,
    "question_answer": question_answer,
}


def required_columns(fmt: str, columns: Mapping[str, str], available: Iterable[str] = ()) -> list[str]:
    """The dataset columns that format ``fmt`` needs under the mapping ``columns``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of: auto, {', '.join(FORMATS)}")
    available = list(available)
    return [_column(fmt, f, columns, available) for f in _FIELDS[fmt] if (fmt, f) not in _OPTIONAL]


def mapped_column_names(column_names: Iterable[str], columns: Mapping[str, str]) -> list[str]:
    """Column names as the format detector should see them: mapped columns renamed to their key."""
    inverse = {v: k for k, v in columns.items()}
    return [inverse.get(c, c) for c in column_names]


def detect_format(column_names: Iterable[str]) -> str:
    """Guess the format from the column names (after a column mapping has been applied)."""
    cols = set(column_names)
    if cols & {"messages", "conversations", "conversation"}:
        return "messages"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if "prompt" in cols and cols & {"completion", "response"}:
        return "prompt_completion"
    if {"question", "answer"} <= cols:
        return "question_answer"
    raise ValueError(
        f"cannot detect the format from columns {sorted(cols)}; set format to one of "
        f"{', '.join(FORMATS)} and, if the names differ, a column mapping such as "
        "{'prompt': 'query', 'response': 'reply'}"
    )
