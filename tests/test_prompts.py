"""One canonical prompt rendering (prompts.py): every format, every consumer, same text."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from brainstacks_pl.data.batches import encode_examples
from brainstacks_pl.data.curriculum import DEMO_DOMAINS, demo_domains
from brainstacks_pl.data.formats import FORMATS, Example
from brainstacks_pl.data.preferences import PreferenceDataModule, PreferencePair
from brainstacks_pl.data.sources import load_examples
from brainstacks_pl.prompts import (
    DEFAULT_PROMPT_TEMPLATE,
    format_prompt,
    keep_prompt_end,
    parse_turns,
    prompt_ids,
    prompt_text,
    render_turns,
)
from brainstacks_pl.routing import features

PREFIX = DEFAULT_PROMPT_TEMPLATE.split("{prompt}")[0]


def test_a_user_turn_renders_the_same_from_every_format():
    rows = {
        "alpaca": {"instruction": "What is 12 times 7?", "input": "", "output": "84"},
        "messages": {
            "messages": [{"role": "user", "content": "What is 12 times 7?"}, {"role": "assistant", "content": "84"}]
        },
        "prompt_completion": {"prompt": "What is 12 times 7?", "completion": "84"},
        "question_answer": {"question": "What is 12 times 7?", "answer": "84"},
    }
    rendered = {fmt: format_prompt(FORMATS[fmt](row, {}).prompt) for fmt, row in rows.items()}
    assert set(rendered.values()) == {PREFIX + "User: What is 12 times 7?\n### Response:\n"}


def test_role_prefixed_text_reads_back_as_turns_and_rendering_is_idempotent():
    assert (
        format_prompt("User: Hi, I'm Tom.")
        == format_prompt("Hi, I'm Tom.")
        == format_prompt([("user", "Hi, I'm Tom.")])
    )
    convo = "User: Hi, I'm Ana.\nAssistant: Hello Ana!\nUser: What can you do?\nList it."
    assert parse_turns(convo) == [
        ("User", "Hi, I'm Ana."),
        ("Assistant", "Hello Ana!"),
        ("User", "What can you do?\nList it."),
    ]
    assert render_turns(convo) == convo and prompt_text(convo) == convo
    assert format_prompt(format_prompt_body := render_turns("Plain question?")) == format_prompt(format_prompt_body)
    assert prompt_text("User: only one turn") == "only one turn"
    # Text that does not start with a role prefix is one user turn, whatever it contains.
    assert parse_turns("Translate:\nUser: hola") == [("User", "Translate:\nUser: hola")]


def test_a_system_message_folds_into_the_first_user_turn():
    turns = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Name a color.")]
    assert render_turns(turns) == "User: Be brief.\n\nHi\nAssistant: Hello!\nUser: Name a color."
    assert render_turns("System: Be brief.\nUser: Hi") == "User: Be brief.\n\nHi"
    assert render_turns([("system", "Only a system text.")]) == "User: Only a system text."


def _skeleton(prompt: str) -> str:
    """The rendered prompt with every turn's content blanked: its format, nothing else."""
    return format_prompt([(role, "...") for role, _ in parse_turns(prompt)])


def test_no_demo_domain_can_be_told_apart_by_its_prompt_format():
    """On the bundled demo data every prompt starts with the same template and ``User:`` turn,
    and every domain's single-turn prompts share one skeleton; only chat has a history
    (earlier turns), which is the conversation's content rather than its file format."""
    single = format_prompt("...")
    skeletons: dict[str, Counter] = {}
    for cfg in demo_domains(DEMO_DOMAINS):
        examples, _ = load_examples(cfg)
        rendered = [format_prompt(ex.prompt) for ex in examples]
        assert all(r.startswith(PREFIX + "User: ") for r in rendered), cfg.name
        assert not any(re.search(r"^(System|Human):", r, re.MULTILINE) for r in rendered), cfg.name
        skeletons[cfg.name] = Counter(_skeleton(ex.prompt) for ex in examples)
    for name, counts in skeletons.items():
        # The single-turn skeleton is each domain's most common one: format alone never says "chat".
        assert counts.most_common(1)[0][0] == single, (name, counts.most_common(3))
        assert set(counts) - {single} <= {s for s in counts if "Assistant: " in s}, name


@pytest.mark.parametrize("template", ["{prompt}", "Q: {prompt}\nA: "])
def test_custom_templates_keep_the_canonical_body(template):
    assert format_prompt("User: hi", template) == template.replace("{prompt}", "User: hi")


def test_the_http_server_renders_conversations_like_chat_and_generate():
    pytest.importorskip("pydantic")
    from brainstacks_pl.serve.schema import Message, chat_prompt

    lone = [Message(role="user", content="Hi, I'm Tom.")]
    assert chat_prompt(lone) == "Hi, I'm Tom." and format_prompt(chat_prompt(lone)) == format_prompt("Hi, I'm Tom.")
    convo = [
        Message(role="developer", content="Be brief."),
        Message(role="user", content="Hi"),
        Message(role="assistant", content="Hello!"),
        Message(role="user", content="Bye"),
    ]
    assert format_prompt(chat_prompt(convo)) == format_prompt(
        [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye")]
    )


def test_every_prompt_encoder_keeps_the_end_of_a_too_long_prompt(tokenizer):
    """One truncation rule: bos and the last tokens, i.e. the question and the response marker."""
    long = "Background: " + "filler words " * 40 + "So what is 2 + 3?"
    full = prompt_ids(tokenizer, long)
    cut = prompt_ids(tokenizer, long, max_len=32)
    assert len(cut) == 32 and cut[0] == tokenizer.bos_token_id and cut[1:] == full[-31:]
    assert keep_prompt_end(full, 32, tokenizer) == cut, "serving (RoutedGenerator.route_ids) cuts encoded ids alike"
    assert features.prompt_ids(tokenizer, long, max_len=32) == cut, "router features"
    data = PreferenceDataModule(max_prompt_len=32, max_seq_len=64)
    data.set_tokenizer(tokenizer)
    assert data._encode(PreferencePair(long, "yes", "no"))[0] == cut, "DPO pairs (and GRPO prompts)"
    example = Example(prompt=long, response="5", domain="chat")
    ids, labels = encode_examples(tokenizer, [example], max_seq_len=40).item(0)
    prompt = ids[labels == -100].tolist()
    assert prompt[0] == tokenizer.bos_token_id and prompt[1:] == full[-(len(prompt) - 1) :], "SFT examples"
    assert prompt_ids(tokenizer, "short", max_len=64) == prompt_ids(tokenizer, "short"), "a prompt that fits is whole"


# ---------------------------------------------------------------------- the run's template kind
CHATML = (
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _chat_tokenizer():
    from brainstacks_pl.tokenization import byte_tokenizer

    tok = byte_tokenizer()
    tok.chat_template = CHATML
    return tok


def test_auto_is_the_bases_chat_template_when_it_has_one_else_plain():
    from brainstacks_pl.prompts import CHAT_TEMPLATE, DEFAULT_PROMPT_TEMPLATE, resolve_template
    from brainstacks_pl.tokenization import byte_tokenizer

    assert resolve_template("auto", byte_tokenizer()) == DEFAULT_PROMPT_TEMPLATE
    assert resolve_template("auto", _chat_tokenizer()) == CHAT_TEMPLATE
    assert resolve_template("plain", _chat_tokenizer()) == DEFAULT_PROMPT_TEMPLATE
    with pytest.raises(ValueError, match="has no chat template"):
        resolve_template("chat", byte_tokenizer())
    with pytest.raises(ValueError, match="auto, plain, chat"):
        resolve_template("Q: A:", byte_tokenizer())


def test_the_chat_template_keeps_system_turns_and_adds_no_bos():
    from brainstacks_pl.prompts import CHAT_TEMPLATE, format_prompt, prompt_head

    tok = _chat_tokenizer()
    text = format_prompt([("system", "Be brief."), ("user", "Hi")], CHAT_TEMPLATE, tok)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert prompt_head(tok, CHAT_TEMPLATE) == [] and prompt_head(tok, "### {prompt}") == [tok.bos_token_id]


def test_a_phase_adopts_the_runs_template_and_refuses_another_explicit_one():
    from brainstacks_pl.data import CurriculumDataModule, DomainConfig
    from brainstacks_pl.prompts import CHAT_TEMPLATE

    def module(template):
        data = CurriculumDataModule([DomainConfig("math", "demo:math")], prompt_template=template)
        data.set_tokenizer(_chat_tokenizer())
        return data

    auto = module("auto")
    auto.use_run_template("### Prompt:\n{prompt}\n### Response:\n")  # a plain run: its stacks answer plain
    assert auto.prompt_template.startswith("### Prompt:")
    module("chat").use_run_template(CHAT_TEMPLATE)
    with pytest.raises(ValueError, match="differs from the run's recorded template"):
        module("plain").use_run_template(CHAT_TEMPLATE)
