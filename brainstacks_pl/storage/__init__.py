"""Files on disk: stack files (safetensors), the run manifest, atomic writes, verification.

One module per idea: ``names`` (domain names, paths inside the run), ``atomic`` (atomic
writes, checksums), ``tensors`` (stack files), ``manifest_schema`` (the manifest's records and
their validation) and ``manifest`` (``Manifest``); this package re-exports their public names.

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

from brainstacks_pl.errors import StackFileError
from brainstacks_pl.storage.atomic import atomic_write_bytes, atomic_write_json, sha256_bytes
from brainstacks_pl.storage.manifest import MANIFEST_NAME as MANIFEST_NAME
from brainstacks_pl.storage.manifest import SCHEMA_VERSION, Manifest
from brainstacks_pl.storage.manifest_schema import StackRecord
from brainstacks_pl.storage.names import DOMAIN_PATTERN, UnsafeNameError, check_domain_name, inside
from brainstacks_pl.storage.tensors import METADATA_KEY as METADATA_KEY
from brainstacks_pl.storage.tensors import load_tensors, save_tensors, serialize_tensors

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
