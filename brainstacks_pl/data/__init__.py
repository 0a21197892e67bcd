"""Curriculum data: format adapters, decontamination and the ``CurriculumDataModule``."""

from brainstacks_pl.data.curriculum import (
    DEMO_DOMAINS,
    CurriculumDataModule,
    DomainConfig,
    EpochShuffleSampler,
    UnknownDomainError,
    demo_domains,
)
from brainstacks_pl.data.decontaminate import normalize_text, remove_duplicates, split_train_val
from brainstacks_pl.data.formats import (
    DEFAULT_PROMPT_TEMPLATE,
    FORMATS,
    Example,
    detect_format,
    strip_chat_tokens,
)
from brainstacks_pl.prompts import format_prompt, parse_turns, prompt_text, render_turns

__all__ = [
    "DEFAULT_PROMPT_TEMPLATE",
    "DEMO_DOMAINS",
    "FORMATS",
    "CurriculumDataModule",
    "DomainConfig",
    "EpochShuffleSampler",
    "Example",
    "UnknownDomainError",
    "demo_domains",
    "detect_format",
    "format_prompt",
    "normalize_text",
    "parse_turns",
    "prompt_text",
    "render_turns",
    "remove_duplicates",
    "split_train_val",
    "strip_chat_tokens",
]
