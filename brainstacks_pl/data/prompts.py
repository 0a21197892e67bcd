"""One canonical rendering of a prompt, for training, routing, generation and evaluation alike.

Every prompt is a conversation: earlier turns, if any, and a final user turn. Whatever file
format it came from (alpaca, messages, prompt/completion, question/answer, a preference pair,
an evaluation task) or whoever sends it (``generate``, ``chat`` with its history, the
router's features, ``evaluate``, the lm-eval adapter), the model sees it rendered by
``format_prompt`` as role-prefixed lines inside the prompt template::

    ### Prompt:
    User: Hi, I'm Ana.              <- every prompt starts with a user turn
    Assistant: Hello Ana!           <- earlier turns, only when there is a history
    User: What can you do?
    ### Response:

so no domain can be told from its file format: a user turn is a user turn. A system message
is folded into the first user turn (its text, a blank line, the user's text; Llama-2's
convention), so a system prompt does not start a prompt differently either.

``Example.prompt`` (and a prompt string anywhere in the API) holds the conversation in its
compact text form, ``prompt_text(turns)``: a lone user turn is its plain text, a longer
conversation its role-prefixed lines. Text that starts with a role prefix (``"User: hi"``)
is read back as turns, so rendering is idempotent and ``"User: Hi"`` typed by hand renders
exactly like ``"Hi"``.

``prompt_ids`` is the one prompt encoder (router features, serving, preference pairs, GRPO
prompts); ``keep_prompt_end`` is the one truncation rule: a prompt too long for its budget
keeps bos and its *end*, the tokens right before the answer, as the SFT data
(``batches.encode_examples``) and evaluation scoring (``score_continuations``) do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "DEFAULT_PROMPT_TEMPLATE",
    "ROLE_NAMES",
    "Turn",
    "format_prompt",
    "keep_prompt_end",
    "parse_turns",
    "prompt_ids",
    "prompt_text",
    "render_turns",
    "role_name",
]

DEFAULT_PROMPT_TEMPLATE = "### Prompt:\n{prompt}\n### Response:\n"

Turn = tuple[str, str]
"""``(role, content)`` with role one of ``System``, ``User``, ``Assistant``."""

ROLE_NAMES = {
    "system": "System",
    "developer": "System",
    "user": "User",
    "human": "User",
    "assistant": "Assistant",
    "gpt": "Assistant",
    "model": "Assistant",
    "bot": "Assistant",
}
_ROLE_LINE_RE = re.compile(r"^(System|User|Human|Assistant):[ \t]?", re.MULTILINE)


def role_name(role: str) -> str:
    """A file's role label (``user``, ``human``, ``gpt``...) as a canonical role name."""
    return ROLE_NAMES.get(str(role).lower(), str(role).capitalize())


def parse_turns(text: str) -> list[Turn]:
    """Text as turns: role-prefixed lines if it starts with a role prefix, else one user turn."""
    text = text.strip()
    if not text:
        return []
    if not _ROLE_LINE_RE.match(text):
        return [("User", text)]
    marks = list(_ROLE_LINE_RE.finditer(text))
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [(role_name(m.group(1)), text[m.end() : end].strip()) for m, end in zip(marks, ends)]


def _fold_system(turns: Sequence[Turn]) -> list[Turn]:
    """System turns join the next user turn's text (or become a user turn if none follows)."""
    out: list[Turn] = []
    pending: list[str] = []
    for role, content in turns:
        if role == "System":
            pending.append(content)
        elif role == "User" and pending:
            out.append(("User", "\n\n".join([*pending, content])))
            pending = []
        else:
            out.append((role, content))
    if pending:
        out.append(("User", "\n\n".join(pending)))
    return out


def _turns(prompt: str | Sequence[Turn]) -> list[Turn]:
    turns = parse_turns(prompt) if isinstance(prompt, str) else [(role_name(r), c.strip()) for r, c in prompt]
    return _fold_system([(role, content) for role, content in turns if content or role != "System"])


def render_turns(prompt: str | Sequence[Turn]) -> str:
    """The canonical body: every turn as a role-prefixed line (``"User: ..."`` first)."""
    return "\n".join(f"{role}: {content}" for role, content in _turns(prompt))


def prompt_text(prompt: str | Sequence[Turn]) -> str:
    """The compact text form: a lone user turn as plain text, a conversation as role lines."""
    turns = _turns(prompt)
    if len(turns) == 1 and turns[0][0] == "User":
        return turns[0][1]
    return render_turns(turns)


def format_prompt(prompt: str | Sequence[Turn], template: str = DEFAULT_PROMPT_TEMPLATE) -> str:
    """The text the model sees before its answer: ``template`` with ``{prompt}`` replaced by
    ``render_turns(prompt)`` (plain replacement: braces in the text are safe).

    The one rendering used for training, routing, generation and evaluation.
    """
    if "{prompt}" not in template:
        raise ValueError(f"prompt_template must contain '{{prompt}}', got {template!r}")
    return template.replace("{prompt}", render_turns(prompt))


def prompt_ids(
    tokenizer, prompt: str | Sequence[Turn], template: str = DEFAULT_PROMPT_TEMPLATE, max_len: int | None = None
) -> list[int]:
    """``[bos] + format_prompt(prompt)`` as token ids, cut by ``keep_prompt_end`` to ``max_len``."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = tokenizer(format_prompt(prompt, template), add_special_tokens=False)["input_ids"]
    return keep_prompt_end(bos + ids, max_len, tokenizer)


def keep_prompt_end(ids: Sequence[int], max_len: int | None, tokenizer) -> list[int]:
    """Encoded prompt ids cut to ``max_len``: bos (if the tokenizer has one) and the *last* tokens.

    The end is kept because it is what the answer follows (the question after a long context,
    the last turn of a chat, the template's response marker). Every truncating prompt encoder
    uses this; ``batches.encode_examples`` keeps the same end of an over-long example's prompt.
    """
    if not max_len or len(ids) <= max_len:
        return list(ids)
    head = 1 if tokenizer.bos_token_id is not None else 0
    return list(ids[:head]) + list(ids[-max(max_len - head, 1) :])
