"""The tokenizer of a data module: given by name (loaded on first use) or set by the phase.

Shared by the curriculum and the preference/prompt data modules, so "brainstacks-demo"
resolves to the shipped demo base everywhere, the pad id follows one rule, and the prompt
template is resolved one way (``auto`` -> the tokenizer's chat template if it has one) and
replaced by the run's recorded template when a phase continues a run (``use_run_template``).
"""

from __future__ import annotations

from typing import Any

from brainstacks_pl.assets import resolve_model_name
from brainstacks_pl.prompts import AUTO_TEMPLATE, resolve_template
from brainstacks_pl.tokenization import pad_token_id

__all__ = ["TokenizerMixin"]


class TokenizerMixin:
    """``tokenizer`` / ``set_tokenizer`` / ``pad_id`` for a data module with ``tokenizer_name``."""

    tokenizer_name: str | None
    _tokenizer: Any
    template_setting: str
    """The ``prompt_template`` option as configured (``auto``, ``plain``, ``chat`` or a text)."""
    _run_template: str | None = None

    @property
    def prompt_template(self) -> str:
        """The resolved template every prompt of this module is rendered with (``prompts.py``)."""
        return self._run_template or resolve_template(self.template_setting, self.tokenizer)

    def use_run_template(self, recorded: str) -> None:
        """Render prompts with a run's recorded template; a different explicit setting is an error
        (a run's stacks answer in the template they were trained with)."""
        explicit = self.template_setting != AUTO_TEMPLATE
        if explicit and resolve_template(self.template_setting, self.tokenizer) != recorded:
            raise ValueError(
                f"prompt_template {self.template_setting!r} differs from the run's recorded template {recorded!r}; "
                "leave it at auto (a run's stacks are trained, evaluated and served in one template)"
            )
        if recorded != self._run_template:
            self._run_template = recorded
            self._forget_encoded()

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self.tokenizer_name is None:
                raise ValueError(
                    f"{type(self).__name__} has no tokenizer: pass tokenizer=<path or hub name> or call set_tokenizer"
                )
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_model_name(self.tokenizer_name))
        return self._tokenizer

    def set_tokenizer(self, tokenizer) -> None:
        """Use ``tokenizer`` (any ``PreTrainedTokenizer``); drops data tokenized with another one."""
        self._tokenizer = tokenizer
        self._forget_encoded()

    def _forget_encoded(self) -> None:
        """Drop tokenized data: ``_encoded`` here; a module that caches elsewhere overrides this."""
        self._encoded = None

    @property
    def pad_id(self) -> int:
        return pad_token_id(self.tokenizer)
