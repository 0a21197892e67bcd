"""Files on disk: stack files (safetensors), the run manifest, atomic writes, verification.

Every write goes to a temporary file in the target directory and is renamed into place, so
a killed process leaves either the old file or the new one, never half of one. Every load
checks the sha256 recorded in the manifest, the tensor shapes against the model and that
every tensor is floating point and finite; only safetensors is ever parsed: a pickle is
refused before anything executes it.

A run directory is input like any other (shared, copied, edited by hand, downloaded), so
``Manifest.load`` parses ``manifest.json`` once into typed, validated records: domain names
match ``DOMAIN_PATTERN`` and are in ``domains``, every file is a relative path inside the run
with a sha256, records are unique, the stack config has the right types (docs/run_directory.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor

from brainstacks_pl.errors import StackFileError, UserError
from brainstacks_pl.layers.stack_format import check_shapes, file_shapes

__all__ = [
    "SCHEMA_VERSION",
    "DOMAIN_PATTERN",
    "check_domain_name",
    "inside",
    "StackFileError",
    "UnsafeNameError",
    "StackRecord",
    "Manifest",
    "atomic_write_bytes",
    "atomic_write_json",
    "sha256_bytes",
    "save_tensors",
    "serialize_tensors",
    "load_tensors",
]

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
METADATA_KEY = "brainstacks"


DOMAIN_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""A domain name: it becomes part of file names (``stacks/<domain>-r<k>.safetensors``), so
letters, digits, ``_`` and ``-`` only, at most 64 characters, no path separator, no dot."""

_SHA256 = re.compile(r"[0-9a-f]{64}")


class UnsafeNameError(UserError, ValueError):
    """A domain name that could not safely become part of a file name."""


def check_domain_name(name: Any, where: str) -> str:
    """``name`` if it is a safe domain name (``DOMAIN_PATTERN``), else an ``UnsafeNameError``."""
    if not isinstance(name, str) or not DOMAIN_PATTERN.fullmatch(name):
        raise UnsafeNameError(
            f"{where}: domain name {name!r} is not allowed (letters, digits, '_' "
            "and '-', starting with a letter or digit, at most 64 characters)"
        )
    return name


def inside(root: str | Path, relative: Any, where: str) -> Path:
    """``root / relative`` after checking that ``relative`` is a relative path that stays inside
    ``root`` (no ``..``, not absolute, no symlink out of it); a ``StackFileError`` otherwise."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise StackFileError(f"{where}: file path {relative!r} is not a relative path")
    parts = Path(relative).parts
    if Path(relative).is_absolute() or ".." in parts:
        raise StackFileError(
            f"{where}: file path {relative!r} leaves the run directory (absolute or '..'); files must be inside it"
        )
    root = Path(root)
    path = root / relative
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        raise StackFileError(
            f"{where}: file path {relative!r} resolves outside the run directory (a symlink?)"
        ) from None
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced temp file in the same directory + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def serialize_tensors(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes; the metadata travels as one sorted JSON string so the bytes are reproducible
    (safetensors writes a metadata map in arbitrary key order)."""
    packed = {METADATA_KEY: json.dumps(metadata or {}, sort_keys=True)}
    return safetensors_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=packed)


def save_tensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> str:
    """Atomically write ``tensors`` as safetensors; return the file's sha256."""
    data = serialize_tensors(tensors, metadata)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def _looks_pickled(data: bytes) -> bool:
    # pickle protocol >= 2 starts with PROTO (0x80); torch.save writes a zip archive ("PK").
    return data[:1] == b"\x80" or data[:2] == b"PK"


def load_tensors(
    path: str | Path,
    expected_sha256: str | None = None,
    expected_shapes: dict[str, tuple[int, ...]] | None = None,
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Load a safetensors file after checking its checksum; verify shapes when given.

    Returns ``(tensors, metadata)``. Every failure raises ``StackFileError`` naming the file
    and what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise StackFileError(f"{path}: stack file is missing")
    data = path.read_bytes()
    if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
        raise StackFileError(
            f"{path}: sha256 mismatch (file is corrupt, truncated or was replaced; "
            f"expected {expected_sha256[:12]}..., got {sha256_bytes(data)[:12]}...)"
        )
    try:  # safetensors parses without executing anything; a pickle is never unpickled
        tensors = safetensors_load(data)
        metadata = _read_metadata(data)
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as err:
        if _looks_pickled(data):
            raise StackFileError(
                f"{path}: looks like a pickle / torch.save archive; only "
                "safetensors files are loaded (pickles can run code)"
            ) from err
        raise StackFileError(f"{path}: not a readable safetensors file (truncated or corrupt: {err})") from err
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise StackFileError(
                f"{path}: tensor '{key}' has dtype {tensor.dtype}; stack files hold floating-point tensors only"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise StackFileError(
                f"{path}: tensor '{key}' contains NaN or inf; a stack with non-finite weights is never loaded"
            )
    if expected_shapes is not None:
        check_shapes(tensors, expected_shapes, str(path))
    return tensors, metadata


def _read_metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    metadata = dict(header.get("__metadata__") or {})
    return json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else metadata


@dataclass
class StackRecord:
    """One frozen stack as the manifest lists it."""

    file: str
    sha256: str
    domain: str
    round: int
    phase: str = "sft"
    start_val_loss: float | None = None
    """Validation loss of the current domain before this stack trained (earlier stacks on)."""
    best_val_loss: float | None = None
    """Best validation loss of the active stack (full precision) during its round."""
    loss_at_freeze: float | None = None
    """Validation loss right after freezing (storage precision), ungated."""
    val_losses: list[float] = field(default_factory=list)
    train_seconds: float | None = None
    steps: int | None = None


@dataclass
class Manifest:
    """The run directory's table of contents (``manifest.json``)."""

    base_model_id: str
    layer_shapes: dict[str, list[int]]
    stack_config: dict[str, Any]
    domains: list[str]
    schema_version: int = SCHEMA_VERSION
    stacks: list[StackRecord] = field(default_factory=list)
    completed_domains: list[str] = field(default_factory=list)
    null_space: dict[str, dict[str, str]] = field(default_factory=dict)
    """domain -> {"file": ..., "sha256": ...}: the basis the domain's stacks were projected against."""
    base_model: dict[str, Any] = field(default_factory=dict)
    """{"location": resolved absolute path or hub id, "fingerprint": ...} (``brainstacks_pl.fingerprint``)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, run_dir: str | Path) -> None:
        atomic_write_json(Path(run_dir) / MANIFEST_NAME, asdict(self))

    @classmethod
    def load(cls, run_dir: str | Path) -> Manifest:
        """Parse and validate ``RUN/manifest.json``; every problem is a ``StackFileError`` naming it."""
        path = Path(run_dir) / MANIFEST_NAME
        if Path(run_dir).exists() and not Path(run_dir).is_dir():
            raise StackFileError(f"{run_dir}: not a run directory (a file)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise StackFileError(f"{path}: no manifest in this run directory") from err
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise StackFileError(f"{path}: manifest is not valid JSON ({err})") from err
        except OSError as err:
            raise StackFileError(f"{path}: cannot read the manifest ({err.strerror})") from err
        if not isinstance(raw, dict) or raw.get("schema_version") != SCHEMA_VERSION:
            raise StackFileError(
                f"{path}: unsupported manifest schema_version "
                f"{raw.get('schema_version') if isinstance(raw, dict) else None!r} (expected {SCHEMA_VERSION})"
            )
        return _parse_manifest(raw, Path(run_dir), str(path))

    @classmethod
    def exists(cls, run_dir: str | Path) -> bool:
        return (Path(run_dir) / MANIFEST_NAME).is_file()

    def check_compatible(
        self, layer_shapes: dict[str, list[int]], stack_config: dict[str, Any], domains: list[str], where: str
    ) -> None:
        """Refuse to mix stacks across base models, stack configs or curricula."""
        if {k: list(v) for k, v in layer_shapes.items()} != self.layer_shapes:
            diff = sorted(set(layer_shapes) ^ set(self.layer_shapes)) or [
                k for k in layer_shapes if list(layer_shapes[k]) != self.layer_shapes.get(k)
            ]
            raise StackFileError(
                f"{where}: run was made with a different base model "
                f"({self.base_model_id!r}); layers differ, e.g. {diff[:3]}"
            )
        for key in ("experts", "rank", "top_k", "target_modules"):
            if stack_config.get(key) != self.stack_config.get(key):
                raise StackFileError(
                    f"{where}: run used StackConfig.{key}={self.stack_config.get(key)!r}, "
                    f"this config has {stack_config.get(key)!r}"
                )
        if domains[: len(self.completed_domains)] != self.completed_domains:
            raise StackFileError(
                f"{where}: run completed domains {self.completed_domains} but the curriculum is now {domains}"
            )

    def stack_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every tensor a stack file of this run holds (``layers/stack_format.py``)."""
        return file_shapes(self.layer_shapes, self.stack_config["experts"], self.stack_config["rank"])


# ---------------------------------------------------------------------- manifest validation
_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "experts": (int,),
    "rank": (int,),
    "top_k": (int,),
    "alpha": (int, float),
    "rslora": (bool,),
    "noise": (bool,),
    "aux_coeff": (int, float),
    "target_modules": (list,),
    "frozen_dtype": (str,),
    "detach_frozen_input": (bool,),
}
_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "phase": (str,),
    "start_val_loss": (int, float, type(None)),
    "best_val_loss": (int, float, type(None)),
    "loss_at_freeze": (int, float, type(None)),
    "val_losses": (list,),
    "train_seconds": (int, float, type(None)),
    "steps": (int, type(None)),
}


def _typed(value: Any, types: tuple[type, ...], what: str, where: str) -> Any:
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise StackFileError(f"{where}: {what} must be {names}, got {value!r}")
    return value


def _file_entry(entry: Any, root: Path, what: str, where: str) -> tuple[str, str]:
    """(file, sha256) of a record that points at a file of the run: both required and checked."""
    if not isinstance(entry, dict):
        raise StackFileError(f"{where}: {what} must be an object with file and sha256, got {entry!r}")
    inside(root, entry.get("file"), f"{where}: {what}")
    sha = entry.get("sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise StackFileError(f"{where}: {what} needs a sha256 (64 lowercase hex digits), got {sha!r}")
    return entry["file"], sha


def _parse_stack_config(config: Any, where: str) -> dict[str, Any]:
    _typed(config, (dict,), "stack_config", where)
    for key in ("experts", "rank", "top_k", "target_modules"):
        if key not in config:
            raise StackFileError(f"{where}: stack_config lacks {key!r}")
    for key, types in _CONFIG_TYPES.items():
        if key in config:
            _typed(config[key], types, f"stack_config.{key}", where)
    for key in ("experts", "rank", "top_k"):
        if config[key] < 1:
            raise StackFileError(f"{where}: stack_config.{key} must be >= 1, got {config[key]}")
    if config["top_k"] > config["experts"]:
        raise StackFileError(f"{where}: stack_config.top_k={config['top_k']} exceeds experts={config['experts']}")
    if not config["target_modules"] or not all(isinstance(m, str) and m for m in config["target_modules"]):
        raise StackFileError(
            f"{where}: stack_config.target_modules must be a non-empty list of names, got {config['target_modules']!r}"
        )
    if config.get("frozen_dtype", "bfloat16") not in ("bfloat16", "float16", "float32"):
        raise StackFileError(
            f"{where}: stack_config.frozen_dtype must be bfloat16, float16 or float32, got {config['frozen_dtype']!r}"
        )
    return config


def _parse_record(raw: Any, index: int, root: Path, domains: list[str], where: str) -> StackRecord:
    what = f"stacks[{index}]"
    _typed(raw, (dict,), what, where)
    unknown = sorted(set(raw) - set(StackRecord.__dataclass_fields__))
    if unknown:
        raise StackFileError(f"{where}: {what} has unknown fields {unknown}")
    file, sha = _file_entry(raw, root, what, where)
    domain = check_domain_name(raw.get("domain"), f"{where}: {what}")
    if domain not in domains:
        raise StackFileError(
            f"{where}: {what} is a stack of domain {domain!r}, which is not in the run's domains {domains}"
        )
    round = _typed(raw.get("round"), (int,), f"{what}.round", where)
    if round < 0:
        raise StackFileError(f"{where}: {what}.round must be >= 0, got {round}")
    for key, types in _RECORD_TYPES.items():
        if key in raw:
            _typed(raw[key], types, f"{what}.{key}", where)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw.get("val_losses", [])):
        raise StackFileError(f"{where}: {what}.val_losses must be a list of numbers")
    return StackRecord(**{**raw, "file": file, "sha256": sha, "domain": domain, "round": round})


def _parse_manifest(raw: dict[str, Any], root: Path, where: str) -> Manifest:
    unknown = sorted(set(raw) - set(Manifest.__dataclass_fields__))
    if unknown:
        raise StackFileError(f"{where}: malformed manifest, unknown fields {unknown}")
    base = _typed(raw.get("base_model_id"), (str,), "base_model_id", where)
    shapes = _typed(raw.get("layer_shapes"), (dict,), "layer_shapes", where)
    for name, shape in shapes.items():
        if not (
            isinstance(shape, list)
            and len(shape) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
        ):
            raise StackFileError(
                f"{where}: layer_shapes[{name!r}] must be [d_in, d_out] (positive integers), got {shape!r}"
            )
    config = _parse_stack_config(raw.get("stack_config"), where)
    domains = _typed(raw.get("domains"), (list,), "domains", where)
    for name in domains:
        check_domain_name(name, f"{where}: domains")
    if len(set(domains)) != len(domains):
        raise StackFileError(f"{where}: domains lists a name twice: {domains}")
    stacks = [
        _parse_record(r, i, root, domains, where)
        for i, r in enumerate(_typed(raw.get("stacks", []), (list,), "stacks", where))
    ]
    for key in ("file", "domain/round"):
        seen: set = set()
        for record in stacks:
            ident = record.file if key == "file" else (record.domain, record.round)
            if ident in seen:
                raise StackFileError(
                    f"{where}: stack {ident!r} is listed twice (a duplicated record would be applied twice)"
                )
            seen.add(ident)
    completed = _typed(raw.get("completed_domains", []), (list,), "completed_domains", where)
    if any(d not in domains for d in completed) or len(set(completed)) != len(completed):
        raise StackFileError(f"{where}: completed_domains {completed} must be distinct names from domains {domains}")
    null_space = _typed(raw.get("null_space", {}), (dict,), "null_space", where)
    for domain, entry in null_space.items():
        if domain not in domains:
            raise StackFileError(
                f"{where}: null_space names domain {domain!r}, which is not in the run's domains {domains}"
            )
        _file_entry(entry, root, f"null_space[{domain!r}]", where)
    base_model = _typed(raw.get("base_model", {}), (dict,), "base_model", where)
    extra = _typed(raw.get("extra", {}), (dict,), "extra", where)
    if "router" in extra:
        _file_entry(extra["router"], root, "extra.router", where)
        inside(root, extra["router"].get("json"), f"{where}: extra.router.json")
    return Manifest(
        base_model_id=base,
        layer_shapes=shapes,
        stack_config=config,
        domains=list(domains),
        stacks=stacks,
        completed_domains=list(completed),
        null_space=null_space,
        base_model=base_model,
        extra=extra,
    )
