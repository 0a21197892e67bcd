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

**Two kinds of template** (``docs/data.md``, recorded in the run's manifest and read from there
by every later phase, ``evaluate`` and ``serve``):

* ``plain`` (the paper's choice): the text template above, the same for every base;
  any other string containing ``{prompt}`` is a custom plain template;
* ``chat``: the base's own chat template (``tokenizer.apply_chat_template`` with the
  generation prompt), system turns kept as system messages, no extra bos (the template
  writes whatever special tokens the model expects) and the base's end-of-turn token (its
  ``eos``) ending every answer.

``auto`` (the default of every data module) is resolved once, by ``resolve_template``, to
``chat`` for a tokenizer that has a chat template and ``plain`` otherwise. A prompt answered
by the base alone goes in ``base_template`` (its own chat template whenever it has one).

``prompt_ids`` is the one prompt encoder (router features, serving, preference pairs, GRPO
prompts); ``keep_prompt_end`` is the one truncation rule: a prompt too long for its budget
keeps bos and its *end*, the tokens right before the answer, as the SFT data
(``batches.encode_examples``) and evaluation scoring (``score_continuations``) do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "AUTO_TEMPLATE",
    "CHAT_TEMPLATE",
    "DEFAULT_PROMPT_TEMPLATE",
    "PLAIN_TEMPLATE",
    "base_template",
    "check_resolved_template",
    "check_template",
    "prompt_head",
    "resolve_template",
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
"""The ``plain`` template (the paper's Alpaca-style wrapping)."""
PLAIN_TEMPLATE = "plain"
CHAT_TEMPLATE = "chat"
AUTO_TEMPLATE = "auto"

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


def check_template(template: str) -> str:
    """``template`` if it is ``auto``, ``plain``, ``chat`` or a string containing ``{prompt}``."""
    if not isinstance(template, str) or (
        template not in (AUTO_TEMPLATE, PLAIN_TEMPLATE, CHAT_TEMPLATE) and "{prompt}" not in template
    ):
        raise ValueError(
            f"prompt_template must be auto, plain, chat or a text containing '{{prompt}}', got {template!r}"
        )
    return template


def check_resolved_template(template: str) -> str:
    """``template`` if it is what a run records (``chat`` or a text containing ``{prompt}``)."""
    if not isinstance(template, str) or (template != CHAT_TEMPLATE and "{prompt}" not in template):
        raise ValueError(f"prompt_template must be 'chat' or a text containing '{{prompt}}', got {template!r}")
    return template


def _has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_template(template: str, tokenizer) -> str:
    """The template a run records: ``auto`` -> ``chat`` when ``tokenizer`` has a chat template,
    else the plain text; ``plain`` -> the plain text; ``chat`` (checked to exist) or a custom text as given."""
    check_template(template)
    if template == AUTO_TEMPLATE:
        return CHAT_TEMPLATE if _has_chat_template(tokenizer) else DEFAULT_PROMPT_TEMPLATE
    if template == PLAIN_TEMPLATE:
        return DEFAULT_PROMPT_TEMPLATE
    if template == CHAT_TEMPLATE and not _has_chat_template(tokenizer):
        raise ValueError("prompt_template is 'chat' but the base's tokenizer has no chat template; use plain (or auto)")
    return template


def base_template(tokenizer, run_template: str) -> str:
    """The template of a prompt answered by the base alone (``:base``, the capability gap): the
    base's own chat template when it has one, else the run's template."""
    return CHAT_TEMPLATE if _has_chat_template(tokenizer) else run_template


def format_prompt(prompt: str | Sequence[Turn], template: str = DEFAULT_PROMPT_TEMPLATE, tokenizer=None) -> str:
    """The text the model sees before its answer.

    A plain template gets ``{prompt}`` replaced by ``render_turns(prompt)`` (plain replacement:
    braces in the text are safe); ``chat`` renders the turns with ``tokenizer``'s chat template
    and its generation prompt. The one rendering used for training, routing, generation and evaluation.
    """
    if template == CHAT_TEMPLATE:
        if not _has_chat_template(tokenizer):
            raise ValueError("the chat prompt template needs a tokenizer with a chat template")
        messages = [{"role": role.lower(), "content": content} for role, content in _chat_turns(prompt)]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if template in (AUTO_TEMPLATE, PLAIN_TEMPLATE):
        raise ValueError(f"prompt template {template!r} must be resolved first (resolve_template)")
    if "{prompt}" not in template:
        raise ValueError(f"prompt_template must contain '{{prompt}}', got {template!r}")
    return template.replace("{prompt}", render_turns(prompt))


def _chat_turns(prompt: str | Sequence[Turn]) -> list[Turn]:
    """Turns for a chat template: system turns stay system messages (the template places them)."""
    turns = parse_turns(prompt) if isinstance(prompt, str) else [(role_name(r), c.strip()) for r, c in prompt]
    return [(role, content) for role, content in turns if content or role != "System"]


def prompt_head(tokenizer, template: str) -> list[int]:
    """The ids before the rendered prompt: ``[bos]`` for a plain template (if the tokenizer has
    one); nothing for ``chat``, whose rendering already starts the way the model expects."""
    if template == CHAT_TEMPLATE or tokenizer.bos_token_id is None:
        return []
    return [tokenizer.bos_token_id]


def prompt_ids(
    tokenizer, prompt: str | Sequence[Turn], template: str = DEFAULT_PROMPT_TEMPLATE, max_len: int | None = None
) -> list[int]:
    """``prompt_head + format_prompt(prompt)`` as token ids, cut by ``keep_prompt_end`` to ``max_len``."""
    ids = tokenizer(format_prompt(prompt, template, tokenizer), add_special_tokens=False)["input_ids"]
    return keep_prompt_end(prompt_head(tokenizer, template) + ids, max_len, tokenizer)


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
