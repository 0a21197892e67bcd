"""Stack files: tensors as safetensors, written atomically and loaded only after checking the
sha256, that every tensor is floating point and finite and (when given) the shapes. Only
safetensors is ever parsed: a pickle is refused before anything executes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor

from brainstacks_pl.errors import StackFileError
from brainstacks_pl.layers.stack_format import check_shapes
from brainstacks_pl.storage.atomic import atomic_write_bytes, sha256_bytes

__all__ = ["METADATA_KEY", "load_tensors", "save_tensors", "serialize_tensors"]

METADATA_KEY = "brainstacks"


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
