"""Format adapters, auto detection, chat-markup stripping and the prompt template."""

from __future__ import annotations

import math

import pytest

from brainstacks_pl.data.formats import (
    DEFAULT_PROMPT_TEMPLATE,
    FORMATS,
    Example,
    detect_format,
    format_prompt,
    mapped_column_names,
    required_columns,
    strip_chat_tokens,
)


def test_alpaca_with_and_without_input():
    row = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
    assert FORMATS["alpaca"](row, {}, domain="math") == Example("Add the numbers.\n\n2 and 3", "5", "math")
    row = {"instruction": "Say hi.", "input": "", "output": "Hi!"}
    assert FORMATS["alpaca"](row, {}).prompt == "Say hi."
    no_input = {"instruction": "Say hi.", "output": "Hi!"}
    assert FORMATS["alpaca"](no_input, {}).prompt == "Say hi."
    empty_csv_cell = {"instruction": "a", "input": math.nan, "output": "b"}
    assert FORMATS["alpaca"](empty_csv_cell, {}).prompt == "a"


def test_messages_prompt_is_everything_before_last_assistant_turn():
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Name a color."},
            {"role": "assistant", "content": "Blue."},
        ]
    }
    ex = FORMATS["messages"](row, {})
    assert ex.prompt == "User: Be brief.\n\nHi\nAssistant: Hello!\nUser: Name a color."
    assert ex.response == "Blue."


def test_messages_sharegpt_keys_and_markup_in_content():
    row = {
        "conversations": [
            {"from": "human", "value": "<|im_start|>user\nWhat is 2+2?<|im_end|>"},
            {"from": "gpt", "value": "<start_of_turn>model\n4<end_of_turn>"},
        ]
    }
    ex = FORMATS["messages"](row, {})
    assert (ex.prompt, ex.response) == ("What is 2+2?", "4")


def test_messages_without_assistant_turn_raises():
    with pytest.raises(ValueError, match="no assistant turn"):
        FORMATS["messages"]({"messages": [{"role": "user", "content": "hi"}]}, {})


def test_prompt_completion_and_question_answer():
    assert FORMATS["prompt_completion"]({"prompt": " p ", "completion": " c "}, {}) == Example("p", "c", "")
    assert FORMATS["prompt_completion"]({"prompt": "p", "response": "r"}, {}).response == "r"
    assert FORMATS["question_answer"]({"question": "q?", "answer": "a"}, {}, "qa") == Example("q?", "a", "qa")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_generic_column_mapping_works_for_every_format(fmt):
    if fmt == "messages":
        row = {"chat": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
        ex = FORMATS[fmt](row, {"messages": "chat"})
        assert (ex.prompt, ex.response) == ("hi", "yo")
        return
    ex = FORMATS[fmt]({"query": "Q", "reply": "R"}, {"prompt": "query", "response": "reply"})
    assert (ex.prompt, ex.response) == ("Q", "R")


def test_specific_column_mapping():
    row = {"task": "Sum", "ctx": "1, 2", "target": "3"}
    ex = FORMATS["alpaca"](row, {"instruction": "task", "input": "ctx", "output": "target"})
    assert (ex.prompt, ex.response) == ("Sum\n\n1, 2", "3")
    ex = FORMATS["question_answer"]({"q": "x", "a": "y"}, {"question": "q", "answer": "a"})
    assert (ex.prompt, ex.response) == ("x", "y")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_missing_column_error_names_it(fmt):
    with pytest.raises(ValueError, match=r"missing column .*columns found: \['unrelated'\]"):
        FORMATS[fmt]({"unrelated": "x"}, {})


def test_required_columns_and_unknown_format():
    assert required_columns("alpaca", {}) == ["instruction", "output"]
    assert required_columns("prompt_completion", {}, ["prompt", "response"]) == ["prompt", "response"]
    assert required_columns("question_answer", {"prompt": "q"}) == ["q", "answer"]
    with pytest.raises(ValueError, match="unknown format 'nope'"):
        required_columns("nope", {})


@pytest.mark.parametrize(
    "columns, expected",
    [
        (["messages"], "messages"),
        (["conversations", "id"], "messages"),
        (["instruction", "input", "output"], "alpaca"),
        (["prompt", "completion"], "prompt_completion"),
        (["prompt", "response"], "prompt_completion"),
        (["question", "answer", "source"], "question_answer"),
    ],
)
def test_detect_format(columns, expected):
    assert detect_format(columns) == expected


def test_detect_format_with_mapping_and_failure():
    mapped = mapped_column_names(["query", "reply"], {"prompt": "query", "response": "reply"})
    assert detect_format(mapped) == "prompt_completion"
    with pytest.raises(ValueError, match=r"cannot detect the format from columns \['a', 'b'\]"):
        detect_format(["a", "b"])


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("<|im_start|>system\nBe nice<|im_end|>\n<|im_start|>user\nHi<|im_end|>", "Be nice\n\nHi"),
        ("<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\nHey<end_of_turn>", "Hello\n\nHey"),
        ("<s>[INST] <<SYS>>\nYou help.\n<</SYS>>\n\nWhat is 2+2? [/INST] 4 </s>", "You help.\n\nWhat is 2+2? 4"),
        ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>", "Hi there"),
        ("word</s>next", "word next"),
        ("a [INST] b [/INST]<|im_end|>c", "a b c"),
        ("plain text stays", "plain text stays"),
    ],
)
def test_strip_chat_tokens(raw, clean):
    assert strip_chat_tokens(raw) == clean


def test_strip_chat_tokens_keeps_code_indentation():
    raw = "<|im_start|>assistant\ndef f(x):\n    return x  <|im_end|>"
    assert strip_chat_tokens(raw) == "def f(x):\n    return x"


def test_format_prompt():
    assert format_prompt("Hi {there}") == "### Prompt:\nUser: Hi {there}\n### Response:\n"
    assert DEFAULT_PROMPT_TEMPLATE == "### Prompt:\n{prompt}\n### Response:\n"
    assert format_prompt("x", "Q: {prompt}\nA: ") == "Q: User: x\nA: "
    with pytest.raises(ValueError, match="must contain"):
        format_prompt("x", "no placeholder")
