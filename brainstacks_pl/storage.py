"""Files on disk: stack files (safetensors), the run manifest, atomic writes, verification.

Every write goes to a temporary file in the target directory and is renamed into place, so
a killed process leaves either the old file or the new one, never half of one. Every load
checks the sha256 recorded in the manifest and the tensor shapes against the model, and
only safetensors is ever parsed: a pickle is refused before anything executes it.
"""

from __future__ import annotations

from brainstacks_pl.errors import UserError

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor

__all__ = [
    "SCHEMA_VERSION",
    "StackFileError",
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


class StackFileError(UserError, ValueError):
    """A stack, basis or manifest file is missing, corrupt, foreign or unsafe."""


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
        raise StackFileError(f"{path}: sha256 mismatch (file is corrupt, truncated or was replaced; expected {expected_sha256[:12]}..., got {sha256_bytes(data)[:12]}...)")
    try:  # safetensors parses without executing anything; a pickle is never unpickled
        tensors = safetensors_load(data)
        metadata = _read_metadata(data)
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as err:
        if _looks_pickled(data):
            raise StackFileError(f"{path}: looks like a pickle / torch.save archive; only safetensors files are loaded (pickles can run code)") from err
        raise StackFileError(f"{path}: not a readable safetensors file (truncated or corrupt: {err})") from err
    if expected_shapes is not None:
        missing = sorted(set(expected_shapes) - set(tensors))
        if missing:
            raise StackFileError(f"{path}: lacks {len(missing)} tensors this model needs, e.g. {missing[:3]} (stack from another base model?)")
        for key, shape in expected_shapes.items():
            if tuple(tensors[key].shape) != tuple(shape):
                raise StackFileError(f"{path}: tensor '{key}' has shape {tuple(tensors[key].shape)}, this model needs {tuple(shape)} (stack from another base model or StackConfig?)")
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
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, run_dir: str | Path) -> None:
        atomic_write_json(Path(run_dir) / MANIFEST_NAME, asdict(self))

    @classmethod
    def load(cls, run_dir: str | Path) -> "Manifest":
        path = Path(run_dir) / MANIFEST_NAME
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise StackFileError(f"{path}: no manifest in this run directory") from err
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise StackFileError(f"{path}: manifest is not valid JSON ({err})") from err
        if not isinstance(raw, dict) or raw.get("schema_version") != SCHEMA_VERSION:
            raise StackFileError(f"{path}: unsupported manifest schema_version {raw.get('schema_version') if isinstance(raw, dict) else None!r} (expected {SCHEMA_VERSION})")
        try:
            raw["stacks"] = [StackRecord(**s) for s in raw.get("stacks", [])]
            return cls(**raw)
        except TypeError as err:
            raise StackFileError(f"{path}: malformed manifest ({err})") from err

    @classmethod
    def exists(cls, run_dir: str | Path) -> bool:
        return (Path(run_dir) / MANIFEST_NAME).is_file()

    def check_compatible(self, layer_shapes: dict[str, list[int]], stack_config: dict[str, Any], domains: list[str], where: str) -> None:
        """Refuse to mix stacks across base models, stack configs or curricula."""
        if {k: list(v) for k, v in layer_shapes.items()} != self.layer_shapes:
            diff = sorted(set(layer_shapes) ^ set(self.layer_shapes)) or [k for k in layer_shapes if list(layer_shapes[k]) != self.layer_shapes.get(k)]
            raise StackFileError(f"{where}: run was made with a different base model ({self.base_model_id!r}); layers differ, e.g. {diff[:3]}")
        for key in ("experts", "rank", "top_k", "target_modules"):
            if stack_config.get(key) != self.stack_config.get(key):
                raise StackFileError(f"{where}: run used StackConfig.{key}={self.stack_config.get(key)!r}, this config has {stack_config.get(key)!r}")
        if domains[: len(self.completed_domains)] != self.completed_domains:
            raise StackFileError(f"{where}: run completed domains {self.completed_domains} but the curriculum is now {domains}")

    def stack_shapes(self) -> dict[str, tuple[int, ...]]:
        experts, rank = self.stack_config["experts"], self.stack_config["rank"]
        shapes = {}
        for name, (d_in, d_out) in self.layer_shapes.items():
            shapes[f"{name}.in_proj"] = (experts * rank + 2 * experts, d_in)
            shapes[f"{name}.B"] = (d_out, experts * rank)
        return shapes
