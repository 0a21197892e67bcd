"""Data for the alignment phases: preference pairs (DPO) and prompts with checkable columns (GRPO).

``PreferenceDataModule`` reads rows ``{prompt, chosen, rejected}`` (strings, or TRL's
conversational lists of ``{"role", "content"}`` turns) and serves batches of ``2B`` rows: the
``B`` chosen sequences first, then the ``B`` rejected ones, so one forward scores both. Each
sequence is ``[bos] + format_prompt(prompt) + response + eos`` with labels ``-100`` on bos and
the prompt: the same text the SFT phase trained on, tokenised as prompt ids + response ids so
chosen and rejected share their prompt tokens exactly.

``PromptDataModule`` reads rows with a prompt column and any other columns (``answer``,
``tests``, ...). It serves left-padded prompt ids for sampling plus the raw columns, which the
reward functions receive as keyword arguments.

A path ``demo:<name>`` is a bundled file in ``brainstacks_pl/data/demo`` (``demo:chat_preferences``,
``demo:math_rl``, ``demo:code_rl``). Rows are split into train/validation by a hash of the
prompt (``decontaminate.split_train_val``, the curriculum's split); files are read by the
curriculum's loader (``sources.open_dataset``) and prompts encoded by ``prompts.prompt_ids``
(a too-long prompt keeps bos and its end).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from brainstacks_pl.data.batches import EpochShuffleSampler
from brainstacks_pl.data.decontaminate import check_val_fraction, split_train_val
from brainstacks_pl.data.formats import strip_chat_tokens
from brainstacks_pl.data.prompts import DEFAULT_PROMPT_TEMPLATE, format_prompt, prompt_ids, prompt_text
from brainstacks_pl.data.sources import open_dataset
from brainstacks_pl.data.tokenizer import TokenizerMixin
from brainstacks_pl.generation import pad_left

__all__ = ["PreferencePair", "PreferenceDataModule", "PromptDataModule", "load_rows", "preference_pairs"]

log = logging.getLogger(__name__)
_info = rank_zero_only(log.info)
_warn = rank_zero_only(log.warning)

_PROMPT_COLUMNS = ("prompt", "question", "instruction", "query")


# --------------------------------------------------------------------------- loading


def load_rows(
    path: str, split: str = "train", max_examples: int | None = None, label: str = "alignment data"
) -> list[dict[str, Any]]:
    """Rows of ``path`` (``demo:<name>``, a local file / glob / directory, or a hub dataset),
    read by the curriculum's loader (``sources.open_dataset``) so both get the same checks."""
    ds, _ = open_dataset(path, label, split)
    rows = [dict(row) for row in ds]
    return rows[:max_examples] if max_examples is not None else rows


def _split(data, items: list, what: str, prompt_of=attrgetter("prompt")) -> tuple[list, list]:
    """The curriculum's hash split of a data module's items, validation cut to ``max_val_examples``."""
    train, val = split_train_val(items, data.val_fraction, data.seed, prompt_of)
    val = val[: data.max_val_examples] if data.max_val_examples is not None else val
    _info("%s: %d training %s, %d validation %s", data.path, len(train), what, len(val), what)
    return train, val


def _text(value: Any, field: str) -> str:
    """A cell as text: a string, or the last assistant turn of a list of chat turns."""
    if value is None:
        return ""
    if isinstance(value, str):
        return strip_chat_tokens(value)
    if isinstance(value, list):
        turns = [t for t in value if isinstance(t, Mapping)]
        if field == "prompt":
            return prompt_text(
                [(str(t.get("role", "user")), strip_chat_tokens(str(t.get("content", "")))) for t in turns]
            )
        answers = [t for t in turns if str(t.get("role", "assistant")) == "assistant"] or turns
        return strip_chat_tokens(str(answers[-1].get("content", ""))) if answers else ""
    return strip_chat_tokens(str(value))


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
        pair = PreferencePair(*(_text(row[names[f]], f) for f in ("prompt", "chosen", "rejected")))
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


class _EncodedSplitLoaders:
    """The loaders of both alignment data modules, over their encoded ``train`` / ``val`` items:
    training shuffled per epoch, validation in order; each module brings its own collator."""

    _encoded: dict[str, list] | None
    batch_size: int
    eval_batch_size: int
    seed: int
    num_workers: int

    def collator(self) -> Callable[[list], dict[str, Any]]:
        """Turns a list of encoded items into a batch."""
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        data = self._encoded["train"]
        return DataLoader(
            data,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(data), self.seed),
            collate_fn=self.collator(),
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self._encoded["val"],
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self.collator(),
            num_workers=self.num_workers,
        )


class PreferenceDataModule(_EncodedSplitLoaders, TokenizerMixin, L.LightningDataModule):
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
        prompt_template: Text around each prompt; must contain ``{prompt}`` (the SFT phase's).
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
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        format_prompt("", prompt_template)
        check_val_fraction(val_fraction)
        if max_prompt_len < 1 or max_seq_len <= max_prompt_len:
            raise ValueError(f"need 1 <= max_prompt_len < max_seq_len, got {max_prompt_len} and {max_seq_len}")
        self.path, self.columns, self.split, self.max_examples = path, dict(columns or {}), split, max_examples
        self.tokenizer_name = tokenizer
        self.max_prompt_len, self.max_seq_len = max_prompt_len, max_seq_len
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.val_fraction, self.max_val_examples = val_fraction, max_val_examples
        self.prompt_template, self.seed, self.num_workers = prompt_template, seed, num_workers
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
            self._pairs = _split(self, pairs, "pairs")
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


class PromptDataModule(_EncodedSplitLoaders, TokenizerMixin, L.LightningDataModule):
    """Prompts for GRPO; every other column reaches the reward functions as a keyword argument.

    Args:
        path: Local json/jsonl/csv/parquet file, glob or directory, a hub dataset name, or
            ``demo:math_rl`` / ``demo:code_rl`` (bundled).
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
        prompt_template: Text around each prompt; must contain ``{prompt}`` (the SFT phase's).
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
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        format_prompt("", prompt_template)
        check_val_fraction(val_fraction)
        self.path, self.prompt_column, self.columns = path, prompt_column, None if columns is None else dict(columns)
        self.tokenizer_name, self.split, self.max_examples = tokenizer, split, max_examples
        self.max_prompt_len, self.batch_size, self.eval_batch_size = (
            max_prompt_len,
            batch_size,
            eval_batch_size or batch_size,
        )
        self.val_fraction, self.max_val_examples = val_fraction, max_val_examples
        self.prompt_template, self.seed, self.num_workers = prompt_template, seed, num_workers
        self._tokenizer = None
        self._rows: tuple[list, list] | None = None
        self._encoded: dict[str, list] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._rows is None:
            rows = load_rows(self.path, self.split, self.max_examples)
            if not rows:
                raise ValueError(f"{self.path}: no rows")
            column = self.prompt_column or next((c for c in _PROMPT_COLUMNS if c in rows[0]), None)
            if column is None or column not in rows[0]:
                raise ValueError(
                    f"{self.path}: no prompt column (looked for {self.prompt_column or _PROMPT_COLUMNS}); "
                    f"found {sorted(rows[0])}"
                )
            mapping = self.columns if self.columns is not None else {k: k for k in rows[0] if k != column}
            missing = sorted(set(mapping.values()) - set(rows[0]))
            if missing:
                raise ValueError(f"{self.path}: columns {missing} do not exist; found {sorted(rows[0])}")
            items = [(_text(r[column], "prompt"), {k: r[v] for k, v in mapping.items()}) for r in rows]
            empty = sum(1 for p, _ in items if not p)
            items = [it for it in items if it[0]]
            if empty:
                _warn("%s: dropped %d rows with an empty prompt", self.path, empty)
            if not items:
                raise ValueError(f"{self.path}: no rows with a prompt")
            self._rows = _split(self, items, "prompts", prompt_of=itemgetter(0))
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
