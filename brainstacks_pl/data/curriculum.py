"""``CurriculumDataModule``: domains in curriculum order, one active at a time.

Per domain, once in ``setup``: load (``datasets``: local json/jsonl/csv/parquet files or a hub
name) -> adapt rows to ``Example`` -> strip chat markup -> drop exact duplicates within and
across domains -> hash split by prompt -> drop training examples overlapping another domain's
validation set -> tokenize. Text of one example::

    [bos] + format_prompt(prompt) + response + eos      labels: -100 up to the response

Training rows are packed (examples concatenated and cut into rows of exactly ``max_seq_len``;
attention crosses example boundaries inside a row). Validation is never packed: one example
per row, right-padded, so a domain's loss does not depend on packing. The rules are written
up in ``docs/data.md``.
"""

from __future__ import annotations

import codecs
import glob
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, Dataset, Sampler

from brainstacks_pl.data.decontaminate import (
    DECONTAMINATE_MODES,
    drop_overlapping,
    remove_duplicates,
    split_train_val,
)
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

__all__ = [
    "DEMO_DIR", "DEMO_DOMAINS", "CurriculumDataModule", "DomainConfig", "Encoded", "EpochShuffleSampler",
    "PadCollator", "UnknownDomainError", "demo_domains", "encode_examples", "load_examples",
    "pack_encoded",
]

log = logging.getLogger(__name__)
_info = rank_zero_only(log.info)
_warn = rank_zero_only(log.warning)

DEMO_DIR = Path(__file__).parent / "demo"
DEMO_DOMAINS = ("chat", "code", "math", "medical", "reasoning")
_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class DomainConfig:
    """One domain of the curriculum."""

    name: str
    """Domain name (unique; names the stacks, the router outputs and the logged metrics)."""
    path: str
    """Hub dataset name, local file, glob, or directory of json/jsonl/csv/parquet files (relative
    paths resolve against the current directory); ``demo:<name>`` is the bundled demo domain."""
    format: str = "auto"
    """Row format: auto, alpaca, messages, prompt_completion or question_answer."""
    columns: dict[str, str] = field(default_factory=dict)
    """Column mapping, logical name -> dataset column, e.g. {prompt: query, response: reply}."""
    split: str = "train"
    """Dataset split to load (slicing such as ``train[:1000]`` works); local files are ``train``."""
    max_examples: Optional[int] = None
    """Use only the first N rows (None: all)."""
    subset: Optional[str] = None
    """Hub dataset configuration name (e.g. ``main`` for gsm8k); ignored for local files."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("DomainConfig.name must be a non-empty string")
        if self.format != "auto" and self.format not in FORMATS:
            raise ValueError(
                f"domain {self.name!r}: unknown format {self.format!r}; "
                f"choose one of: auto, {', '.join(FORMATS)}"
            )
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(
                f"domain {self.name!r}: max_examples must be >= 1 or None, got {self.max_examples}"
            )


def demo_domains(names: Sequence[str] = DEMO_DOMAINS) -> list[DomainConfig]:
    """The bundled demo curriculum (chat -> code -> math -> medical -> reasoning)."""
    return [DomainConfig(name=n, path=f"demo:{n}") for n in names]


class UnknownDomainError(KeyError):
    """A domain name that the curriculum does not have."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- loading


def _looks_local(path: str) -> bool:
    return (
        path.startswith(("/", ".", "~")) or any(c in path for c in "*?[") or path.count("/") > 1
        or "\\" in path or Path(path).suffix.lower() in _BUILDERS or Path(path).expanduser().exists()
    )


def _resolve_files(cfg: DomainConfig) -> Optional[list[Path]]:
    """Local data files of a domain, or None for a hub dataset name."""
    if cfg.path.startswith("demo:"):
        stem = cfg.path[len("demo:"):]
        files = sorted(p for p in DEMO_DIR.glob(f"{stem}.*") if p.suffix in _BUILDERS)
        if not files:
            available = sorted({p.stem for p in DEMO_DIR.glob("*") if p.suffix in _BUILDERS})
            raise FileNotFoundError(
                f"domain {cfg.name!r}: no bundled demo data {cfg.path!r}; available: {available}"
            )
        return files
    if not _looks_local(cfg.path):
        return None
    path = Path(cfg.path).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    if any(c in cfg.path for c in "*?["):
        files = [Path(p) for p in sorted(glob.glob(str(path), recursive=True))]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(
            f"domain {cfg.name!r}: data path {cfg.path!r} does not exist (resolved to {path})"
        )
    files = [p for p in files if p.suffix.lower() in _BUILDERS]
    if not files:
        raise FileNotFoundError(
            f"domain {cfg.name!r}: no {'/'.join(_BUILDERS)} files at {cfg.path!r} (resolved to {path})"
        )
    return files


def _check_text_file(domain: str, path: Path) -> bool:
    """Raise a clear error on non-UTF-8 bytes; return whether the file has any non-blank text."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, has_text = 0, False
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                has_text |= bool(decoder.decode(chunk).strip())
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"domain {domain!r}: file {path} is not valid UTF-8 "
                    f"(byte {offset + err.start}: {err.reason})"
                ) from err
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as err:
        raise ValueError(f"domain {domain!r}: file {path} is not valid UTF-8 (truncated at the end)") from err
    return has_text


def _load_dataset(cfg: DomainConfig):
    import datasets  # heavy import, only when data is actually loaded

    files = _resolve_files(cfg)
    if files is None:
        try:
            return datasets.load_dataset(cfg.path, cfg.subset, split=cfg.split), cfg.path
        except Exception as err:
            raise FileNotFoundError(
                f"domain {cfg.name!r}: {cfg.path!r} is not a local path and loading it "
                f"from the hub failed: {err}"
            ) from err
    builders = {_BUILDERS[p.suffix.lower()] for p in files}
    if len(builders) > 1:
        raise ValueError(
            f"domain {cfg.name!r}: mixes file types {sorted(builders)} in {cfg.path!r}; use one type"
        )
    builder = builders.pop()
    where = str(files[0]) if len(files) == 1 else f"{cfg.path} ({len(files)} files)"
    if builder != "parquet" and not any([_check_text_file(cfg.name, p) for p in files]):
        raise ValueError(f"domain {cfg.name!r}: no examples in {where} (empty file)")
    try:
        ds = datasets.load_dataset(builder, data_files=[str(p) for p in files], split=cfg.split)
    except UnicodeDecodeError as err:
        raise ValueError(f"domain {cfg.name!r}: {where} is not valid UTF-8: {err}") from err
    except Exception as err:
        raise ValueError(f"domain {cfg.name!r}: could not load {where} as {builder}: {err}") from err
    return ds, where


def load_examples(cfg: DomainConfig) -> tuple[list[Example], dict[str, int]]:
    """Load, adapt and strip one domain. Returns the examples and ``{"loaded", "dropped_invalid"}``."""
    ds, where = _load_dataset(cfg)
    if cfg.max_examples is not None and len(ds) > cfg.max_examples:
        ds = ds.select(range(cfg.max_examples))
    if len(ds) == 0:
        raise ValueError(f"domain {cfg.name!r}: no examples in {where}")
    found = list(ds.column_names)
    for key, col in cfg.columns.items():
        if col not in found:
            raise ValueError(
                f"domain {cfg.name!r}: mapped column {key}->{col!r} not in {where}; columns found: {found}"
            )
    try:
        fmt = cfg.format if cfg.format != "auto" else detect_format(mapped_column_names(found, cfg.columns))
    except ValueError as err:
        raise ValueError(f"domain {cfg.name!r} ({where}): {err}") from err
    for col in required_columns(fmt, cfg.columns, found):
        if col not in found:
            raise ValueError(
                f"domain {cfg.name!r}: column {col!r} required by format {fmt!r} is missing in {where}; "
                f"columns found: {found}"
            )
    adapter, examples, invalid, first_error = FORMATS[fmt], [], 0, None
    for row in ds:
        try:
            ex = adapter(row, cfg.columns, domain=cfg.name)
        except ValueError as err:
            invalid, first_error = invalid + 1, first_error or err
            continue
        ex.prompt, ex.response = strip_chat_tokens(ex.prompt), strip_chat_tokens(ex.response)
        if ex.prompt and ex.response:
            examples.append(ex)
        else:
            invalid += 1
    if invalid:
        _warn(
            f"domain {cfg.name!r}: skipped {invalid} invalid or empty rows of {len(ds)} in {where} "
            f"({first_error})"
        )
    if not examples:
        raise ValueError(
            f"domain {cfg.name!r}: no usable examples in {where} ({invalid} rows invalid or empty)"
        )
    return examples, {"loaded": len(ds), "dropped_invalid": invalid}


# --------------------------------------------------------------------------- tokenizing and packing


@dataclass
class Encoded:
    """Token ids of N examples stored flat: example i is ``ids[offsets[i]:offsets[i + 1]]``."""

    ids: torch.Tensor  # [T] int64
    labels: torch.Tensor  # [T] int64, -100 outside the response
    offsets: torch.Tensor  # [N + 1] int64
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def item(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.ids[lo:hi], self.labels[lo:hi]


def _prompt_lengths(tokenizer, prompts: list[str], fulls: list[str]) -> tuple[list[list[int]], list[int]]:
    """Tokenize prompt+response jointly; the boundary is the first token starting in the response."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(fulls, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        bounds = [sum(1 for start, _ in offs if start < len(p)) for p, offs in zip(prompts, offsets)]
        return enc["input_ids"], bounds
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer([f[len(p):] for p, f in zip(prompts, fulls)], add_special_tokens=False)["input_ids"]
    return [a + b for a, b in zip(p_ids, r_ids)], [len(a) for a in p_ids]


def encode_examples(
    tokenizer, examples: Sequence[Example], max_seq_len: int, template: str = DEFAULT_PROMPT_TEMPLATE,
    chunk: int = 1024,
) -> Encoded:
    """``[bos] + format_prompt(prompt) + response + eos``; labels are -100 on bos and the prompt.

    An example longer than ``max_seq_len`` keeps bos, the end of its prompt (at least half the
    budget when the prompt is that long) and the start of its response; ``truncated`` counts them.
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    head = [bos] if bos is not None else []
    tail = [eos] if eos is not None else []
    budget = max_seq_len - len(head)
    ids_out, labels_out, lengths, truncated = [], [], [], 0
    for start in range(0, len(examples), chunk):
        part = examples[start:start + chunk]
        prompts = [format_prompt(ex.prompt, template) for ex in part]
        ids, bounds = _prompt_lengths(tokenizer, prompts, [p + ex.response for p, ex in zip(prompts, part)])
        for seq, b in zip(ids, bounds):
            p, r = seq[:b], seq[b:] + tail
            if len(p) + len(r) > budget:
                truncated += 1
                keep = max(budget - len(r), min(len(p), budget // 2))
                p, r = p[len(p) - keep:], r[:budget - keep]
            ids_out.extend(head + p + r)
            labels_out.extend([-100] * (len(head) + len(p)) + r)
            lengths.append(len(head) + len(p) + len(r))
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
    offsets[1:] = torch.tensor(lengths, dtype=torch.long).cumsum(0)
    ids = torch.tensor(ids_out, dtype=torch.long)
    labels = torch.tensor(labels_out, dtype=torch.long)
    return Encoded(ids, labels, offsets, truncated)


def pack_encoded(encoded: Encoded, max_seq_len: int, pad_id: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Concatenate the examples (in a seeded order) and cut rows of exactly ``max_seq_len``.

    Every row is full except the last, whose tail is padding (attention 0, labels -100).
    Attention crosses example boundaries inside a row (no per-document mask).
    """
    order = list(range(len(encoded)))
    random.Random(seed).shuffle(order)
    ids = torch.cat([encoded.item(i)[0] for i in order])  # [T]
    labels = torch.cat([encoded.item(i)[1] for i in order])  # [T]
    rows = -(-len(ids) // max_seq_len)
    pad = rows * max_seq_len - len(ids)
    mask = torch.ones(rows * max_seq_len, dtype=torch.long)
    if pad:
        ids = torch.cat([ids, ids.new_full((pad,), pad_id)])
        labels = torch.cat([labels, labels.new_full((pad,), -100)])
        mask[-pad:] = 0
    shape = (rows, max_seq_len)
    return {"input_ids": ids.view(shape), "attention_mask": mask.view(shape), "labels": labels.view(shape)}


class _PackedDataset(Dataset):
    def __init__(self, rows: dict[str, torch.Tensor]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return self.rows["input_ids"].shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.rows.items()}


class _ExampleDataset(Dataset):
    def __init__(self, encoded: Encoded, limit: Optional[int] = None) -> None:
        self.encoded, self.n = encoded, len(encoded) if limit is None else min(limit, len(encoded))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids, labels = self.encoded.item(i)
        return {"input_ids": ids, "labels": labels}


class PadCollator:
    """Right-pad a list of ``{"input_ids", "labels"[, "attention_mask"]}`` to the longest row."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if "attention_mask" in items[0]:  # packed rows: already equal length
            return {k: torch.stack([it[k] for it in items]) for k in items[0]}
        length = max(len(it["input_ids"]) for it in items)
        batch = {
            "input_ids": torch.full((len(items), length), self.pad_id, dtype=torch.long),  # [B, L]
            "attention_mask": torch.zeros((len(items), length), dtype=torch.long),  # [B, L]
            "labels": torch.full((len(items), length), -100, dtype=torch.long),  # [B, L]
        }
        for row, it in enumerate(items):
            n = len(it["input_ids"])
            batch["input_ids"][row, :n] = it["input_ids"]
            batch["attention_mask"][row, :n] = 1
            batch["labels"][row, :n] = it["labels"]
        return batch


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(length)`` drawn from ``torch.Generator().manual_seed(seed + epoch)``."""

    def __init__(self, length: int, seed: int = 0) -> None:
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


# --------------------------------------------------------------------------- the DataModule


@dataclass
class _DomainData:
    train: list[Example]
    val: list[Example]
    train_encoded: Optional[Encoded] = None
    val_encoded: Optional[Encoded] = None
    packed: Optional[dict[str, torch.Tensor]] = None


class CurriculumDataModule(L.LightningDataModule):
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
        prompt_template: Text around each prompt; must contain ``{prompt}``.
        seed: Seed of the validation split, the packing order and the training shuffle.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        domains: list[DomainConfig],
        tokenizer: Optional[str] = None,
        max_seq_len: int = 256,
        batch_size: int = 8,
        eval_batch_size: Optional[int] = None,
        val_fraction: float = 0.1,
        max_val_examples: Optional[int] = 64,
        pack: bool = True,
        decontaminate: Literal["drop", "reassign", "off"] = "drop",
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        domains = [d if isinstance(d, DomainConfig) else DomainConfig(**d) for d in domains]
        names = [d.name for d in domains]
        if not domains:
            raise ValueError("CurriculumDataModule needs at least one domain")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate domain names: {duplicates}; every domain needs a unique name")
        if decontaminate not in DECONTAMINATE_MODES:
            raise ValueError(f"decontaminate must be one of {DECONTAMINATE_MODES}, got {decontaminate!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if max_seq_len < 2 or batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(
                "need max_seq_len >= 2 and batch sizes >= 1, got "
                f"max_seq_len={max_seq_len}, batch_size={batch_size}, eval_batch_size={eval_batch_size}"
            )
        format_prompt("", prompt_template)  # validates the template
        self.domains = domains
        self.tokenizer_name = tokenizer
        self.max_seq_len, self.batch_size = max_seq_len, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction, self.max_val_examples = val_fraction, max_val_examples
        self.pack, self.decontaminate, self.prompt_template = pack, decontaminate, prompt_template
        self.seed, self.num_workers = seed, num_workers
        self._tokenizer = None
        self._current = names[0]
        self._data: Optional[dict[str, _DomainData]] = None
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

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self.tokenizer_name is None:
                raise ValueError(
                    "CurriculumDataModule has no tokenizer: pass tokenizer=<path or hub name> "
                    "or call set_tokenizer"
                )
            from transformers import AutoTokenizer

            from brainstacks_pl.demo_base import resolve_model_name  # "brainstacks-demo" -> its directory

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_model_name(self.tokenizer_name))
        return self._tokenizer

    def set_tokenizer(self, tokenizer) -> None:
        """Use ``tokenizer`` (any ``PreTrainedTokenizer``); drops tokenized data built with another one."""
        self._tokenizer = tokenizer
        if self._data is not None:
            for data in self._data.values():
                data.train_encoded = data.val_encoded = data.packed = None

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token")
        return pad

    # ----------------------------------------------------------------- setup

    def prepare_data(self) -> None:
        """Download hub datasets once (rank 0); local files need nothing."""
        for cfg in self.domains:
            if _resolve_files(cfg) is None:
                _load_dataset(cfg)

    def setup(self, stage: Optional[str] = None) -> None:
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
                raise ValueError(
                    f"domain {name!r}: no validation examples (needs 2+ distinct prompts): {counts}"
                )
            _info(f"domain {name!r}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
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
            _warn(
                f"domain {name!r}: truncated {truncated} examples longer than max_seq_len={self.max_seq_len}"
            )
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

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Optional[Sampler] = None) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
            collate_fn=PadCollator(self.pad_id), num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        """Training rows of the current domain (packed if ``pack``), reshuffled every epoch."""
        data = self._domain(self._current)
        dataset = _PackedDataset(data.packed) if self.pack else _ExampleDataset(data.train_encoded)
        return self._loader(dataset, self.batch_size, EpochShuffleSampler(len(dataset), self.seed))

    def val_dataloader(self) -> DataLoader:
        """Validation examples of the current domain (see ``val_dataloader_for``)."""
        return self.val_dataloader_for(self._current)

    def val_dataloader_for(self, name: str) -> DataLoader:
        """One example per row, right-padded, deterministic order, at most ``max_val_examples``."""
        data = self._domain(name)
        return self._loader(_ExampleDataset(data.val_encoded, self.max_val_examples), self.eval_batch_size)

    def text_dataloader(
        self, name: str, split: str = "val", limit: Optional[int] = None, batch_size: Optional[int] = None
    ) -> DataLoader:
        """One example per row, right-padded, in ``examples(name, split)`` order (first ``limit``)."""
        data = self._domain(name)
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        encoded = data.train_encoded if split == "train" else data.val_encoded
        return self._loader(_ExampleDataset(encoded, limit), batch_size or self.eval_batch_size)
