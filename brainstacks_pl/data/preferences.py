"""Preference pairs for DPO.

``PreferenceDataModule`` reads rows ``{prompt, chosen, rejected}`` (strings, or TRL's
conversational lists of ``{"role", "content"}`` turns) and serves batches of ``2B`` rows: the
``B`` chosen sequences first, then the ``B`` rejected ones, so one forward scores both. Each
sequence is ``[bos] + format_prompt(prompt) + response + eos`` with labels ``-100`` on bos and
the prompt: the same text the SFT phase trained on, tokenised as prompt ids + response ids so
chosen and rejected share their prompt tokens exactly.

A path ``demo:<name>`` is a bundled file in ``brainstacks_pl/data/demo`` (``demo:chat_preferences``).
Reading and splitting rows: ``alignment_rows.py``. ``PromptDataModule`` (GRPO) lives in
``rl_prompts.py`` and is importable from here too (older configs name it here).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from brainstacks_pl.data.alignment_rows import EncodedSplitLoaders, cell_text, load_rows, split_items
from brainstacks_pl.data.decontaminate import check_val_fraction
from brainstacks_pl.data.rl_prompts import PromptDataModule
from brainstacks_pl.data.tokenizer import TokenizerMixin
from brainstacks_pl.prompts import AUTO_TEMPLATE, check_template, prompt_ids

__all__ = ["PreferencePair", "PreferenceDataModule", "PromptDataModule", "load_rows", "preference_pairs"]

log = logging.getLogger(__name__)
_warn = rank_zero_only(log.warning)


# --------------------------------------------------------------------------- preference pairs


@dataclass
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str


def preference_pairs(
    rows: list[dict[str, Any]], columns: Mapping[str, str] | None = None
) -> tuple[list[PreferencePair], dict[str, int]]:
    """Rows -> pairs; drops rows whose chosen or rejected answer is empty or whose two answers are identical.

    Returns ``(pairs, counts)`` with ``counts`` = ``{"rows", "empty", "identical", "kept"}``.
    """
    columns = dict(columns or {})
    names = {f: columns.get(f, f) for f in ("prompt", "chosen", "rejected")}
    counts = {"rows": len(rows), "empty": 0, "identical": 0, "kept": 0}
    pairs = []
    for row in rows:
        missing = [c for c in names.values() if c not in row]
        if missing:
            raise ValueError(
                f"preference rows need columns {sorted(names.values())}; missing {missing}; found {sorted(row)} "
                "(map them with columns: {prompt: ..., chosen: ..., rejected: ...})"
            )
        pair = PreferencePair(*(cell_text(row[names[f]], f) for f in ("prompt", "chosen", "rejected")))
        if not pair.chosen or not pair.rejected:
            counts["empty"] += 1
        elif pair.chosen == pair.rejected:
            counts["identical"] += 1
        else:
            pairs.append(pair)
    counts["kept"] = len(pairs)
    return pairs, counts


def _response_ids(tokenizer, response: str, budget: int) -> list[int]:
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = tokenizer(response, add_special_tokens=False)["input_ids"] + eos
    return ids[: max(budget, 1)]


class _PairCollator:
    """Right-pads chosen rows then rejected rows into one ``[2B, L]`` batch."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[tuple[list[int], list[int], list[int]]]) -> dict[str, torch.Tensor]:
        seqs = [(p, c) for p, c, _ in items] + [(p, r) for p, _, r in items]
        length = max(len(p) + len(a) for p, a in seqs)
        batch = {
            "input_ids": torch.full((len(seqs), length), self.pad_id, dtype=torch.long),  # [2B, L]
            "attention_mask": torch.zeros((len(seqs), length), dtype=torch.long),  # [2B, L]
            "labels": torch.full((len(seqs), length), -100, dtype=torch.long),  # [2B, L]
        }
        for row, (prompt, answer) in enumerate(seqs):
            n = len(prompt) + len(answer)
            batch["input_ids"][row, :n] = torch.tensor(prompt + answer)
            batch["attention_mask"][row, :n] = 1
            batch["labels"][row, len(prompt) : n] = torch.tensor(answer)
        return batch


class PreferenceDataModule(EncodedSplitLoaders, TokenizerMixin, L.LightningDataModule):
    """Preference pairs for DPO: batches of ``2B`` rows, chosen first.

    Args:
        path: Local json/jsonl/csv/parquet file, glob or directory, a hub dataset name, or
            ``demo:chat_preferences`` (bundled).
        columns: Column mapping, logical name -> dataset column, e.g. ``{prompt: question}``.
        tokenizer: Tokenizer path or hub name; None: the run's base model (set by the phase).
        split: Hub split to load (local files are ``train``).
        max_examples: Use only the first N rows.
        max_prompt_len: Prompt tokens kept (the end of a longer prompt).
        max_seq_len: Prompt + response tokens; a longer response is cut.
        batch_size: Preference pairs per training batch (the forward sees twice as many rows).
        eval_batch_size: Pairs per validation batch (None: ``batch_size``).
        val_fraction: Fraction of unique prompts held out for validation.
        max_val_examples: Validation pairs used (the first in hash order); None: all.
        prompt_template: How prompts are wrapped: ``auto`` (the base's chat template if its
            tokenizer has one, else ``plain``), ``plain`` (the paper's ``### Prompt:`` / ``###
            Response:`` text), ``chat``, or a custom text containing ``{prompt}``. A phase that
            continues a run uses the run's recorded template.
        seed: Seed of the split and of the training shuffle.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        path: str = "demo:chat_preferences",
        columns: dict[str, str] | None = None,
        tokenizer: str | None = None,
        split: str = "train",
        max_examples: int | None = None,
        max_prompt_len: int = 128,
        max_seq_len: int = 192,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        max_val_examples: int | None = 64,
        prompt_template: str = AUTO_TEMPLATE,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.template_setting = check_template(prompt_template)
        check_val_fraction(val_fraction)
        if max_prompt_len < 1 or max_seq_len <= max_prompt_len:
            raise ValueError(f"need 1 <= max_prompt_len < max_seq_len, got {max_prompt_len} and {max_seq_len}")
        self.path, self.columns, self.split, self.max_examples = path, dict(columns or {}), split, max_examples
        self.tokenizer_name = tokenizer
        self.max_prompt_len, self.max_seq_len = max_prompt_len, max_seq_len
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.val_fraction, self.max_val_examples = val_fraction, max_val_examples
        self.seed, self.num_workers = seed, num_workers
        self._tokenizer = None
        self._pairs: tuple[list[PreferencePair], list[PreferencePair]] | None = None
        self._encoded: dict[str, list] | None = None
        self.counts: dict[str, int] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._pairs is None:
            pairs, self.counts = preference_pairs(load_rows(self.path, self.split, self.max_examples), self.columns)
            dropped = self.counts["empty"] + self.counts["identical"]
            if dropped:
                _warn(
                    "%s: dropped %d of %d preference rows (%d with an empty answer, %d with chosen == rejected)",
                    self.path,
                    dropped,
                    self.counts["rows"],
                    self.counts["empty"],
                    self.counts["identical"],
                )
            if not pairs:
                raise ValueError(
                    f"{self.path}: no usable preference pairs left out of {self.counts['rows']} rows ({self.counts})"
                )
            self._pairs = split_items(self, pairs, "pairs")
            if not self._pairs[0]:
                raise ValueError(f"{self.path}: every pair landed in validation; lower val_fraction")
        if self._encoded is None:
            self._encoded = {
                name: [self._encode(p) for p in pairs] for name, pairs in zip(("train", "val"), self._pairs)
            }

    def _encode(self, pair: PreferencePair) -> tuple[list[int], list[int], list[int]]:
        prompt = prompt_ids(self.tokenizer, pair.prompt, self.prompt_template, self.max_prompt_len)
        budget = self.max_seq_len - len(prompt)
        return (
            prompt,
            _response_ids(self.tokenizer, pair.chosen, budget),
            _response_ids(self.tokenizer, pair.rejected, budget),
        )

    def pairs(self, split: str) -> list[PreferencePair]:
        self.setup()
        return list(self._pairs[0 if split == "train" else 1])

    def collator(self) -> _PairCollator:
        return _PairCollator(self.pad_id)
