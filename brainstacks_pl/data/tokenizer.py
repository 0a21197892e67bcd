"""The tokenizer of a data module: given by name (loaded on first use) or set by the phase.

Shared by the curriculum and the preference/prompt data modules, so "brainstacks-demo"
resolves to the shipped demo base everywhere and the pad id follows one rule.
"""

from __future__ import annotations

from typing import Any

from brainstacks_pl.assets import resolve_model_name
from brainstacks_pl.tokenization import pad_token_id

__all__ = ["TokenizerMixin"]


class TokenizerMixin:
    """``tokenizer`` / ``set_tokenizer`` / ``pad_id`` for a data module with ``tokenizer_name``."""

    tokenizer_name: str | None
    _tokenizer: Any

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
