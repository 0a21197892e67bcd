"""``CurriculumDataModule``: domains in curriculum order, one active at a time.

Per domain, once in ``setup``: load (``datasets``: local json/jsonl/csv/parquet files or a hub
name) -> adapt rows to ``Example`` -> strip chat markup -> drop exact duplicates within and
across domains -> hash split by prompt -> drop training examples overlapping another domain's
validation set -> tokenize. Text of one example::

    [bos] + format_prompt(prompt) + response + eos      labels: -100 up to the response

Training rows are packed (examples concatenated and cut into rows of exactly ``max_seq_len``;
attention crosses example boundaries inside a row). Validation is never packed: one example
per row, right-padded, so a domain's loss does not depend on packing. The rules are written
up in ``docs/data.md``. Loading lives in ``sources.py``, tokenizing and packing in
``batches.py``; this module keeps the order of the steps and the per-domain state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Sampler

from brainstacks_pl.data.batches import (
    Encoded,
    EpochShuffleSampler,
    ExampleRows,
    PackedRows,
    PadCollator,
    encode_examples,
    pack_encoded,
)
from brainstacks_pl.data.decontaminate import (
    DECONTAMINATE_MODES,
    check_val_fraction,
    drop_overlapping,
    remove_duplicates,
    split_train_val,
)
from brainstacks_pl.data.formats import Example
from brainstacks_pl.data.sources import (
    DEMO_DIR,
    DEMO_DOMAINS,
    DomainConfig,
    UnknownDomainError,
    demo_domains,
    load_examples,
    open_dataset,
    resolve_files,
)
from brainstacks_pl.data.tokenizer import TokenizerMixin
from brainstacks_pl.prompts import AUTO_TEMPLATE, check_template
from brainstacks_pl.storage import check_domain_name

__all__ = [
    "DEMO_DIR",
    "DEMO_DOMAINS",
    "CurriculumDataModule",
    "DomainConfig",
    "Encoded",
    "EpochShuffleSampler",
    "PadCollator",
    "UnknownDomainError",
    "demo_domains",
    "encode_examples",
    "load_examples",
    "pack_encoded",
]

log = logging.getLogger(__name__)
_info = rank_zero_only(log.info)
_warn = rank_zero_only(log.warning)


# --------------------------------------------------------------------------- the DataModule


@dataclass
class _DomainData:
    train: list[Example]
    val: list[Example]
    train_encoded: Encoded | None = None
    val_encoded: Encoded | None = None
    packed: dict[str, torch.Tensor] | None = None


DROP_WARN_FRACTION = 0.2
"""Decontamination and invalid rows dropping more than this share of a domain's rows warn."""


def _report_drops(name: str, counts: dict[str, int]) -> None:
    """One console line per domain: rows loaded, dropped (and why), kept; a warning above 20%."""
    dropped = counts["loaded"] - counts["kept"]
    reasons = ", ".join(f"{k[len('dropped_') :]} {v}" for k, v in counts.items() if k.startswith("dropped_") and v)
    line = (
        f"data {name!r}: {counts['loaded']} rows loaded, {dropped} dropped"
        + (f" ({reasons})" if reasons else "")
        + f", {counts['train']} train / {counts['val']} val"
    )
    if counts["loaded"] and dropped / counts["loaded"] > DROP_WARN_FRACTION:
        rank_zero_warn(
            f"{line}: {dropped / counts['loaded']:.0%} of the domain's rows dropped (see docs/data.md, decontaminate)"
        )
    else:
        rank_zero_info(line)


class CurriculumDataModule(TokenizerMixin, L.LightningDataModule):
    """Domains in curriculum order; the dataloaders serve the current domain.

    Args:
        domains: The domains, in curriculum order (names must be unique).
        tokenizer: Local path or hub name for ``AutoTokenizer.from_pretrained`` (loaded lazily;
            ``brainstacks-demo`` is the bundled demo base); None if injected with ``set_tokenizer``.
        max_seq_len: Tokens per packed training row; longer examples are truncated.
        batch_size: Training batch size (rows).
        eval_batch_size: Validation / text batch size (None: ``batch_size``).
        val_fraction: Fraction of unique prompts held out for validation (hash of the prompt).
        max_val_examples: Validation examples evaluated per domain by ``val_dataloader`` (the
            first ones in hash order); None: all. ``examples``/``text_dataloader`` see all.
        pack: Pack training examples into full rows of ``max_seq_len`` (validation never is).
        decontaminate: Cross-domain decontamination: drop (keep a shared example in the earliest
            domain), reassign (in the best keyword-profile match) or off.
        prompt_template: How prompts are wrapped: ``auto`` (the base's chat template if its
            tokenizer has one, else ``plain``), ``plain`` (the paper's ``### Prompt:`` / ``###
            Response:`` text), ``chat``, or a custom text containing ``{prompt}``. A phase that
            continues a run uses the run's recorded template.
        seed: Seed of the validation split, the packing order and the training shuffle.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        domains: list[DomainConfig],
        tokenizer: str | None = None,
        max_seq_len: int = 256,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        max_val_examples: int | None = 64,
        pack: bool = True,
        decontaminate: Literal["drop", "reassign", "off"] = "drop",
        prompt_template: str = AUTO_TEMPLATE,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        domains = [d if isinstance(d, DomainConfig) else DomainConfig(**d) for d in domains]
        names = [check_domain_name(d.name, "data.domains") for d in domains]
        if not domains:
            raise ValueError("CurriculumDataModule needs at least one domain")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate domain names: {duplicates}; every domain needs a unique name")
        if decontaminate not in DECONTAMINATE_MODES:
            raise ValueError(f"decontaminate must be one of {DECONTAMINATE_MODES}, got {decontaminate!r}")
        check_val_fraction(val_fraction)
        if max_seq_len < 2 or batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(
                "need max_seq_len >= 2 and batch sizes >= 1, got "
                f"max_seq_len={max_seq_len}, batch_size={batch_size}, eval_batch_size={eval_batch_size}"
            )
        self.template_setting = check_template(prompt_template)
        self.domains = domains
        self.tokenizer_name = tokenizer
        self.max_seq_len, self.batch_size = max_seq_len, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction, self.max_val_examples = val_fraction, max_val_examples
        self.pack, self.decontaminate = pack, decontaminate
        self.seed, self.num_workers = seed, num_workers
        self._tokenizer = None
        self._current = names[0]
        self._data: dict[str, _DomainData] | None = None
        self._report: dict[str, dict[str, int]] = {}

    # ----------------------------------------------------------------- domains

    @property
    def domain_names(self) -> list[str]:
        """Domain names in curriculum order."""
        return [d.name for d in self.domains]

    @property
    def current_domain(self) -> str:
        """The domain that ``train_dataloader`` / ``val_dataloader`` serve."""
        return self._current

    def _check_name(self, name: str) -> str:
        if name not in self.domain_names:
            raise UnknownDomainError(f"unknown domain {name!r}; the curriculum has {self.domain_names}")
        return name

    def set_domain(self, name: str) -> None:
        """Make ``name`` the current domain."""
        self._current = self._check_name(name)

    def state_dict(self) -> dict[str, Any]:
        return {"current_domain": self._current}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.set_domain(state_dict["current_domain"])

    # ----------------------------------------------------------------- tokenizer

    def _forget_encoded(self) -> None:
        if self._data is not None:
            for data in self._data.values():
                data.train_encoded = data.val_encoded = data.packed = None

    # ----------------------------------------------------------------- setup

    def prepare_data(self) -> None:
        """Download hub datasets once (rank 0); local files need nothing."""
        for cfg in self.domains:
            if resolve_files(cfg.path, cfg.label) is None:
                open_dataset(cfg.path, cfg.label, cfg.split, cfg.subset)

    def setup(self, stage: str | None = None) -> None:
        """Load, adapt, decontaminate, split and tokenize every domain (once; later calls are no-ops)."""
        if self._data is None:
            self._data = self._build()
        for name, data in self._data.items():
            if data.train_encoded is None:
                self._tokenize(name, data)

    def _build(self) -> dict[str, _DomainData]:
        loaded, load_counts = {}, {}
        for cfg in self.domains:
            loaded[cfg.name], load_counts[cfg.name] = load_examples(cfg)
        kept, report = remove_duplicates(loaded, self.decontaminate)
        splits = {name: split_train_val(exs, self.val_fraction, self.seed) for name, exs in kept.items()}
        train = {name: tr for name, (tr, _) in splits.items()}
        val = {name: va for name, (_, va) in splits.items()}
        if self.decontaminate != "off":
            train, dropped = drop_overlapping(train, val)
        else:
            dropped = dict.fromkeys(train, 0)
        data = {}
        for name in self.domain_names:
            counts = {**load_counts[name], **report[name], "loaded": load_counts[name]["loaded"]}
            counts.update(dropped_overlap=dropped[name], kept=len(train[name]) + len(val[name]))
            counts.update(train=len(train[name]), val=len(val[name]), truncated=0)
            report[name] = counts
            if not train[name]:
                raise ValueError(
                    f"domain {name!r}: no training examples left after decontamination and split: {counts}"
                )
            if self.val_fraction > 0 and not val[name]:
                raise ValueError(f"domain {name!r}: no validation examples (needs 2+ distinct prompts): {counts}")
            _report_drops(name, counts)
            data[name] = _DomainData(train[name], val[name])
        self._report = report
        return data

    def _tokenize(self, name: str, data: _DomainData) -> None:
        tok, length, template = self.tokenizer, self.max_seq_len, self.prompt_template
        data.train_encoded = encode_examples(tok, data.train, length, template)
        data.val_encoded = encode_examples(tok, data.val, length, template)
        truncated = data.train_encoded.truncated + data.val_encoded.truncated
        self._report[name]["truncated"] = truncated
        if truncated:
            _warn(f"domain {name!r}: truncated {truncated} examples longer than max_seq_len={self.max_seq_len}")
        if self.pack:
            data.packed = pack_encoded(data.train_encoded, self.max_seq_len, self.pad_id, self.seed)

    def _domain(self, name: str) -> _DomainData:
        self._check_name(name)
        self.setup()
        return self._data[name]

    @property
    def decontamination_report(self) -> dict[str, dict[str, int]]:
        """Per domain: loaded, dropped_invalid, dropped_duplicate, dropped_cross_domain, reassigned,
        dropped_overlap, kept, train, val, truncated (empty before ``setup``)."""
        return {name: dict(counts) for name, counts in self._report.items()}

    def examples(self, name: str, split: str = "val") -> list[Example]:
        """The examples of a domain's split ("train" or "val"; val in hash order, uncapped)."""
        data = self._domain(name)
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return list(data.train if split == "train" else data.val)

    # ----------------------------------------------------------------- dataloaders

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            collate_fn=PadCollator(self.pad_id),
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        """Training rows of the current domain (packed if ``pack``), reshuffled every epoch."""
        data = self._domain(self._current)
        dataset = PackedRows(data.packed) if self.pack else ExampleRows(data.train_encoded)
        return self._loader(dataset, self.batch_size, EpochShuffleSampler(len(dataset), self.seed))

    def val_dataloader(self) -> DataLoader:
        """Validation examples of the current domain (see ``val_dataloader_for``)."""
        return self.val_dataloader_for(self._current)

    def val_dataloader_for(self, name: str) -> DataLoader:
        """One example per row, right-padded, deterministic order, at most ``max_val_examples``."""
        data = self._domain(name)
        return self._loader(ExampleRows(data.val_encoded, self.max_val_examples), self.eval_batch_size)

    def text_dataloader(
        self, name: str, split: str = "val", limit: int | None = None, batch_size: int | None = None
    ) -> DataLoader:
        """One example per row, right-padded, in ``examples(name, split)`` order (first ``limit``)."""
        data = self._domain(name)
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        encoded = data.train_encoded if split == "train" else data.val_encoded
        return self._loader(ExampleRows(encoded, limit), batch_size or self.eval_batch_size)
