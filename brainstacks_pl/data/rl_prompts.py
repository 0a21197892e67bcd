"""Prompts for GRPO, with the columns the reward functions check against.

``PromptDataModule`` reads rows with a prompt column and any other columns (``answer``,
``tests``, ...). It serves left-padded prompt ids for sampling plus the raw columns, which the
reward functions receive as keyword arguments. A path ``demo:<name>`` is a bundled file
(``demo:math_rl``, ``demo:code_rl``); prompts are encoded by ``prompts.prompt_ids`` (a too-long
prompt keeps bos and its end). Reading and splitting rows: ``alignment_rows.py``.
"""

from __future__ import annotations

import logging
from operator import itemgetter
from typing import Any

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only

from brainstacks_pl.data.alignment_rows import PROMPT_COLUMNS, EncodedSplitLoaders, cell_text, load_rows, split_items
from brainstacks_pl.data.decontaminate import check_val_fraction
from brainstacks_pl.data.procedural import is_procedural
from brainstacks_pl.data.sources import ProceduralOptions
from brainstacks_pl.data.tokenizer import TokenizerMixin
from brainstacks_pl.generation import pad_left
from brainstacks_pl.prompts import AUTO_TEMPLATE, check_template, prompt_ids

__all__ = ["PromptDataModule"]

log = logging.getLogger(__name__)
_warn = rank_zero_only(log.warning)


# --------------------------------------------------------------------------- prompts for GRPO


class _PromptCollator:
    """Left-pads prompt ids (generation appends on the right) and keeps the raw columns as lists."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[tuple[list[int], dict[str, Any]]]) -> dict[str, Any]:
        input_ids, attention_mask = pad_left([ids for ids, _ in items], self.pad_id)  # [N, P]
        keys = [k for k in items[0][1] if k != "prompt"]
        columns = {k: [row[k] for _, row in items] for k in keys}
        prompts = [row["prompt"] for _, row in items]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "prompts": prompts, "columns": columns}


class PromptDataModule(EncodedSplitLoaders, TokenizerMixin, L.LightningDataModule):
    """Prompts for GRPO; every other column reaches the reward functions as a keyword argument.

    Args:
        path: Local json/jsonl/csv/parquet file, glob or directory, a hub dataset name,
            ``demo:math_rl`` / ``demo:code_rl`` (bundled), or ``reasoning_gym:<family>`` (its rows
            carry ``answer`` and ``entry`` for ``data.procedural.reasoning_gym_reward``).
        size: ``reasoning_gym:`` paths: items to generate.
        generator: ``reasoning_gym:`` paths: the family's settings (as a curriculum domain's);
            the items are generated with ``seed``, so the SFT domain's seed gives its very items.
        prompt_column: Column holding the prompt (None: the first of prompt, question, instruction, query).
        columns: Extra columns to pass to the rewards, reward keyword -> dataset column
            (e.g. ``{answer: solution}``); None: every other column under its own name.
        tokenizer: Tokenizer path or hub name; None: the run's base model (set by the phase).
        split: Hub split to load (local files are ``train``).
        max_examples: Use only the first N rows.
        max_prompt_len: Prompt tokens kept (the end of a longer prompt).
        batch_size: Prompts per generation batch (each gets ``group_size`` completions).
        eval_batch_size: Prompts per validation batch (None: ``batch_size``).
        val_fraction: Fraction of unique prompts held out for validation.
        max_val_examples: Validation prompts used (the first in hash order); None: all.
        prompt_template: How prompts are wrapped: ``auto`` (the base's chat template if its
            tokenizer has one, else ``plain``), ``plain`` (the paper's ``### Prompt:`` / ``###
            Response:`` text), ``chat``, or a custom text containing ``{prompt}``. A phase that
            continues a run uses the run's recorded template.
        seed: Seed of the split and of the training shuffle.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        path: str = "demo:math_rl",
        prompt_column: str | None = None,
        columns: dict[str, str] | None = None,
        tokenizer: str | None = None,
        split: str = "train",
        max_examples: int | None = None,
        max_prompt_len: int = 128,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        max_val_examples: int | None = 32,
        prompt_template: str = AUTO_TEMPLATE,
        seed: int = 0,
        num_workers: int = 0,
        size: int = 1000,
        generator: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.procedural = ProceduralOptions(size, seed, dict(generator or {})) if is_procedural(path) else None
        self.template_setting = check_template(prompt_template)
        check_val_fraction(val_fraction)
        self.path, self.prompt_column, self.columns = path, prompt_column, None if columns is None else dict(columns)
        self.tokenizer_name, self.split, self.max_examples = tokenizer, split, max_examples
        self.max_prompt_len, self.batch_size, self.eval_batch_size = (
            max_prompt_len,
            batch_size,
            eval_batch_size or batch_size,
        )
        self.val_fraction, self.max_val_examples = val_fraction, max_val_examples
        self.seed, self.num_workers = seed, num_workers
        self._tokenizer = None
        self._rows: tuple[list, list] | None = None
        self._encoded: dict[str, list] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._rows is None:
            rows = load_rows(self.path, self.split, self.max_examples, procedural=self.procedural)
            if not rows:
                raise ValueError(f"{self.path}: no rows")
            column = self.prompt_column or next((c for c in PROMPT_COLUMNS if c in rows[0]), None)
            if column is None or column not in rows[0]:
                raise ValueError(
                    f"{self.path}: no prompt column (looked for {self.prompt_column or PROMPT_COLUMNS}); "
                    f"found {sorted(rows[0])}"
                )
            mapping = self.columns if self.columns is not None else {k: k for k in rows[0] if k != column}
            missing = sorted(set(mapping.values()) - set(rows[0]))
            if missing:
                raise ValueError(f"{self.path}: columns {missing} do not exist; found {sorted(rows[0])}")
            items = [(cell_text(r[column], "prompt"), {k: r[v] for k, v in mapping.items()}) for r in rows]
            empty = sum(1 for p, _ in items if not p)
            items = [it for it in items if it[0]]
            if empty:
                _warn("%s: dropped %d rows with an empty prompt", self.path, empty)
            if not items:
                raise ValueError(f"{self.path}: no rows with a prompt")
            self._rows = split_items(self, items, "prompts", prompt_of=itemgetter(0))
        if self._encoded is None:
            self._encoded = {
                name: [
                    (prompt_ids(self.tokenizer, p, self.prompt_template, self.max_prompt_len), {"prompt": p, **cols})
                    for p, cols in rows
                ]
                for name, rows in zip(("train", "val"), self._rows)
            }

    def collator(self) -> _PromptCollator:
        return _PromptCollator(self.pad_id)
