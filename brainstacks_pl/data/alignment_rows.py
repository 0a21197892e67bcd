"""What both alignment data modules share: reading rows, the hash split, cell text, the loaders.

Rows are read by the curriculum's loader (``sources.open_dataset``: the same UTF-8 and format
checks) and split into train/validation by a hash of the prompt
(``decontaminate.split_train_val``, the curriculum's split). ``preferences.py`` (DPO pairs) and
``rl_prompts.py`` (GRPO prompts) build on these.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from brainstacks_pl.data.batches import EpochShuffleSampler
from brainstacks_pl.data.decontaminate import split_train_val
from brainstacks_pl.data.formats import strip_chat_tokens
from brainstacks_pl.data.sources import ProceduralOptions, open_dataset
from brainstacks_pl.prompts import prompt_text

__all__ = ["PROMPT_COLUMNS", "EncodedSplitLoaders", "cell_text", "load_rows", "split_items"]

log = logging.getLogger(__name__)
_info = rank_zero_only(log.info)

PROMPT_COLUMNS = ("prompt", "question", "instruction", "query")
"""Columns tried, in order, when a data module is not told which one holds the prompt."""


# --------------------------------------------------------------------------- loading


def load_rows(
    path: str,
    split: str = "train",
    max_examples: int | None = None,
    label: str = "alignment data",
    procedural: ProceduralOptions | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``path`` (``demo:<name>``, a local file / glob / directory, a hub dataset, or a
    ``reasoning_gym:<family>`` generated with ``procedural``), read by the curriculum's loader
    (``sources.open_dataset``) so both get the same checks."""
    ds, _ = open_dataset(path, label, split, procedural=procedural)
    rows = [dict(row) for row in ds]
    return rows[:max_examples] if max_examples is not None else rows


def split_items(data, items: list, what: str, prompt_of=attrgetter("prompt")) -> tuple[list, list]:
    """The curriculum's hash split of a data module's items, validation cut to ``max_val_examples``."""
    train, val = split_train_val(items, data.val_fraction, data.seed, prompt_of)
    val = val[: data.max_val_examples] if data.max_val_examples is not None else val
    _info("%s: %d training %s, %d validation %s", data.path, len(train), what, len(val), what)
    return train, val


def cell_text(value: Any, field: str) -> str:
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


class EncodedSplitLoaders:
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
