"""Where a domain's examples come from: local files, the bundled demo data or a hub dataset.

``load_examples`` turns one ``DomainConfig`` into ``Example`` rows (format adapters, column
mapping, chat-markup stripping) and counts what it dropped; everything after that (dedup,
split, tokenizing) belongs to the curriculum. Errors name the domain and the file.
"""

from __future__ import annotations

import codecs
import glob
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only

from brainstacks_pl.data.formats import (
    FORMATS,
    Example,
    detect_format,
    mapped_column_names,
    required_columns,
    strip_chat_tokens,
)
from brainstacks_pl.data.procedural import family_of, generate_items, is_procedural

__all__ = [
    "DEMO_DIR",
    "DEMO_DOMAINS",
    "DomainConfig",
    "ProceduralOptions",
    "UnknownDomainError",
    "demo_domains",
    "load_examples",
    "open_dataset",
    "resolve_files",
]

log = logging.getLogger(__name__)
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
    paths resolve against the current directory); ``demo:<name>`` is the bundled demo domain;
    ``reasoning_gym:<family>`` generates items of a reasoning-gym family (``size``, ``seed``,
    ``generator``)."""
    format: str = "auto"
    """Row format: auto, alpaca, messages, prompt_completion or question_answer."""
    columns: dict[str, str] = field(default_factory=dict)
    """Column mapping, logical name -> dataset column, e.g. {prompt: query, response: reply}."""
    split: str = "train"
    """Dataset split to load (slicing such as ``train[:1000]`` works); local files are ``train``."""
    max_examples: int | None = None
    """Use only the first N rows (None: all)."""
    subset: str | None = None
    """Hub dataset configuration name (e.g. ``main`` for gsm8k); ignored for local files."""
    size: int = 1000
    """``reasoning_gym:`` sources: items to generate (before the validation split)."""
    seed: int = 0
    """``reasoning_gym:`` sources: the generator's seed."""
    generator: dict[str, Any] = field(default_factory=dict)
    """``reasoning_gym:`` sources: the family's settings (keyword arguments of
    ``reasoning_gym.create_dataset``, e.g. ``{min_terms: 2, max_terms: 2}`` for chain_sum)."""

    @property
    def procedural(self) -> ProceduralOptions | None:
        """The generator options of a ``reasoning_gym:`` source (None for any other path)."""
        return ProceduralOptions(self.size, self.seed, dict(self.generator)) if is_procedural(self.path) else None

    @property
    def label(self) -> str:
        """How errors name this data: ``domain 'math'``."""
        return f"domain {self.name!r}"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("DomainConfig.name must be a non-empty string")
        if self.format != "auto" and self.format not in FORMATS:
            raise ValueError(
                f"domain {self.name!r}: unknown format {self.format!r}; choose one of: auto, {', '.join(FORMATS)}"
            )
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"domain {self.name!r}: max_examples must be >= 1 or None, got {self.max_examples}")


@dataclass(frozen=True)
class ProceduralOptions:
    """How a ``reasoning_gym:<family>`` source generates its items (``data/procedural.py``)."""

    size: int = 1000
    seed: int = 0
    generator: dict[str, Any] = field(default_factory=dict)


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
        path.startswith(("/", ".", "~"))
        or any(c in path for c in "*?[")
        or path.count("/") > 1
        or "\\" in path
        or Path(path).suffix.lower() in _BUILDERS
        or Path(path).expanduser().exists()
    )


def resolve_files(path: str, label: str) -> list[Path] | None:
    """Local data files at ``path`` (``demo:<name>``, a file, glob or directory), or None for a
    hub dataset name; ``label`` names the data in errors (``domain 'math'``)."""
    if is_procedural(path):
        return []  # generated, nothing to download
    if path.startswith("demo:"):
        stem = path[len("demo:") :]
        files = sorted(p for p in DEMO_DIR.glob(f"{stem}.*") if p.suffix in _BUILDERS)
        if not files:
            available = sorted({p.stem for p in DEMO_DIR.glob("*") if p.suffix in _BUILDERS})
            raise FileNotFoundError(f"{label}: no bundled demo data {path!r}; available: {available}")
        return files
    if not _looks_local(path):
        return None
    local = Path(path).expanduser()
    local = local if local.is_absolute() else Path.cwd() / local
    if any(c in path for c in "*?["):
        files = [Path(p) for p in sorted(glob.glob(str(local), recursive=True))]
    elif local.is_dir():
        files = sorted(p for p in local.rglob("*") if p.is_file())
    elif local.is_file():
        files = [local]
    else:
        raise FileNotFoundError(f"{label}: data path {path!r} does not exist (resolved to {local})")
    files = [p for p in files if p.suffix.lower() in _BUILDERS]
    if not files:
        raise FileNotFoundError(f"{label}: no {'/'.join(_BUILDERS)} files at {path!r} (resolved to {local})")
    return files


def _check_text_file(label: str, path: Path) -> bool:
    """Raise a clear error on non-UTF-8 bytes; return whether the file has any non-blank text."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, has_text = 0, False
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                has_text |= bool(decoder.decode(chunk).strip())
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{label}: file {path} is not valid UTF-8 (byte {offset + err.start}: {err.reason})"
                ) from err
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as err:
        raise ValueError(f"{label}: file {path} is not valid UTF-8 (truncated at the end)") from err
    return has_text


def builder_options(builder: str, files: Sequence[Path]) -> dict:
    """CSV cells are read as text: type inference would turn a column of integer answers with one
    empty cell into floats ("2" -> "2.0") and empty cells into NaN."""
    if builder != "csv":
        return {}
    import csv

    import datasets

    with open(files[0], newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    return {
        "features": datasets.Features({name: datasets.Value("string") for name in header}),
        "keep_default_na": False,
    }


def open_dataset(
    path: str,
    label: str,
    split: str = "train",
    subset: str | None = None,
    procedural: ProceduralOptions | None = None,
):
    """``(dataset, where)`` for any data path: the one loader of the curriculum and the alignment
    data, so every file gets the same checks (UTF-8, empty file, one file type, CSV as text).

    A ``reasoning_gym:<family>`` path becomes a dataset with the columns ``question``,
    ``answer`` and ``entry`` (the whole item as JSON, for the family's scorer)."""
    import datasets  # heavy import, only when data is actually loaded

    if is_procedural(path):
        options = procedural or ProceduralOptions()
        items = generate_items(family_of(path), options.size, options.seed, options.generator)
        rows = [{"question": e["question"], "answer": str(e["answer"]), "entry": json.dumps(e)} for e in items]
        return datasets.Dataset.from_list(rows), f"{path} ({options.size} items, seed {options.seed})"

    files = resolve_files(path, label)
    if files is None:
        try:
            return datasets.load_dataset(path, subset, split=split), path
        except Exception as err:
            raise FileNotFoundError(
                f"{label}: {path!r} is not a local path and loading it from the hub failed: {err}"
            ) from err
    builders = {_BUILDERS[p.suffix.lower()] for p in files}
    if len(builders) > 1:
        raise ValueError(f"{label}: mixes file types {sorted(builders)} in {path!r}; use one type")
    builder = builders.pop()
    where = str(files[0]) if len(files) == 1 else f"{path} ({len(files)} files)"
    if builder != "parquet" and not any([_check_text_file(label, p) for p in files]):
        raise ValueError(f"{label}: no examples in {where} (empty file)")
    try:
        ds = datasets.load_dataset(
            builder, data_files=[str(p) for p in files], split=split, **builder_options(builder, files)
        )
    except UnicodeDecodeError as err:
        raise ValueError(f"{label}: {where} is not valid UTF-8: {err}") from err
    except Exception as err:
        raise ValueError(f"{label}: could not load {where} as {builder}: {err}") from err
    return ds, where


def load_examples(cfg: DomainConfig) -> tuple[list[Example], dict[str, int]]:
    """Load, adapt and strip one domain. Returns the examples and ``{"loaded", "dropped_invalid"}``."""
    ds, where = open_dataset(cfg.path, cfg.label, cfg.split, cfg.subset, cfg.procedural)
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
        _warn(f"domain {cfg.name!r}: skipped {invalid} invalid or empty rows of {len(ds)} in {where} ({first_error})")
    if not examples:
        raise ValueError(f"domain {cfg.name!r}: no usable examples in {where} ({invalid} rows invalid or empty)")
    return examples, {"loaded": len(ds), "dropped_invalid": invalid}
