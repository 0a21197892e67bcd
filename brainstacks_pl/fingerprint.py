"""The base model is part of a run's identity: a cheap fingerprint of its config and weights files.

Stacks are deltas on one particular base. Applied to another base of the same shapes (another
checkpoint of the architecture, a fine-tune, an edited ``base_model_id``) they load and run
and answer wrongly without a word, so the manifest records ``base_model = {"location",
"fingerprint"}`` and every entry point that puts stacks on a base (a resumed ``fit``, the
router and alignment phases, ``generate``, ``chat``, ``evaluate``) compares it first.

What the fingerprint covers, and why it is cheap for a 10 GB checkpoint:

* ``config``: sha256 of ``config.json`` as canonical JSON, minus the keys that say where or
  how it was loaded (``_name_or_path``, ``transformers_version``, ``torch_dtype``/``dtype``);
* ``source`` (a base converted from GGUF only): the sha256 of the GGUF file;
* ``weights``: one sha256 over every weights file (``*.safetensors``, ``*.bin``, ``*.pt``,
  ``*.pth``) in name order: its name and size, and, for a file over ``WHOLE_FILE_BYTES``, its
  safetensors header (names, dtypes, shapes, offsets: up to ``HEADER_BYTES``) and
  ``SAMPLE_BLOCKS`` blocks of ``BLOCK_BYTES`` at evenly spaced offsets; a smaller file is
  hashed whole. A 10 GB checkpoint in 5 shards costs 5 x (header + 16 x 64 KiB) ~ 6 MB of
  reads. Any other checkpoint of the same architecture (another seed, a fine-tune, another
  dtype) differs in every sampled block; a change confined to bytes between the samples is
  not seen (a deliberate edit of a few weights is not what this guards against).

Where the files sit is not part of the fingerprint: a run moved to another machine with its
base at another path matches as long as the files are the same (``docs/run_directory.md``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from brainstacks_pl.errors import UserError
from brainstacks_pl.gguf_convert import SOURCE_FILE

__all__ = [
    "BaseModelMismatch",
    "base_location",
    "check_base_exists",
    "is_local",
    "base_directory",
    "fingerprint",
    "check_base_model",
    "ACCEPT_FLAG",
]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
WHOLE_FILE_BYTES = 32 * 2**20
"""Files up to this size are hashed whole."""
HEADER_BYTES = 64 * 2**20
"""Most bytes of a safetensors header hashed (a header is a few MB even for 100B-parameter models)."""
SAMPLE_BLOCKS = 16
BLOCK_BYTES = 64 * 2**10
VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash")
ACCEPT_FLAG = "--accept_new_base"
"""The explicit override of generate/chat/evaluate; ``fit`` takes ``--accept_new_base true``."""


class BaseModelMismatch(UserError, ValueError):
    """The base model given is not the one the run's stacks were trained on, or cannot be found."""


def _looks_like_path(name: str) -> bool:
    return (
        Path(name).is_absolute()
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or os.sep != "/"
        and os.sep in name
    )


def base_location(name_or_path: str) -> str:
    """What the manifest records as the base's location: an existing local path made absolute
    (a relative ``../tiny_model`` would break from another working directory), else the name."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path


def _local(name_or_path: str) -> Path:
    from brainstacks_pl.assets import resolve_model_name

    return Path(resolve_model_name(name_or_path)).expanduser()


def is_local(name_or_path: str) -> bool:
    """The base is a local directory (or the bundled demo base), not a hub id."""
    return _local(name_or_path).exists()


def check_base_exists(name_or_path: str) -> None:
    """A name that can only be a local path must exist (transformers would report a missing
    directory as a malformed hub repo id)."""
    if _looks_like_path(name_or_path) and not _local(name_or_path).exists():
        raise BaseModelMismatch(f"base model directory {name_or_path!r} does not exist")


def base_directory(name_or_path: str) -> Path:
    """The local directory holding the base's files: the path itself, the bundled demo base, or
    the Hugging Face cache snapshot of a hub id. A ``BaseModelMismatch`` naming it otherwise."""
    path = _local(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise BaseModelMismatch(f"base model {name_or_path!r} is a file; give the directory written by save_pretrained")
    check_base_exists(name_or_path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception as err:  # not downloaded, or not a valid hub id
        raise BaseModelMismatch(
            f"base model {name_or_path!r}: no such directory and not "
            f"in the local Hugging Face cache ({type(err).__name__})"
        ) from err


def _hash_file(path: Path, digest: hashlib._Hash) -> None:
    size = path.stat().st_size
    digest.update(f"{path.name}\0{size}\0".encode())
    with path.open("rb") as handle:
        if size <= WHOLE_FILE_BYTES:
            digest.update(handle.read())
            return
        start = 0
        if path.suffix == ".safetensors":
            header_len = int.from_bytes(handle.read(8), "little")
            start = 8 + min(header_len, HEADER_BYTES)
            digest.update(handle.read(start - 8))
        span = max(size - start - BLOCK_BYTES, 0)
        for i in range(SAMPLE_BLOCKS):
            handle.seek(start + span * i // (SAMPLE_BLOCKS - 1))
            digest.update(handle.read(BLOCK_BYTES))


def fingerprint(name_or_path: str) -> dict[str, Any]:
    """``{"config": sha256, "weights": sha256, "weights_bytes": n, "files": n}`` of a base model."""
    directory = base_directory(name_or_path)
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BaseModelMismatch(
            f"base model {name_or_path!r}: cannot read {directory / 'config.json'} ({err})"
        ) from err
    if not isinstance(config, dict):
        raise BaseModelMismatch(f"base model {name_or_path!r}: {directory / 'config.json'} is not a JSON object")
    canonical = json.dumps({k: v for k, v in config.items() if k not in VOLATILE_CONFIG_KEYS}, sort_keys=True)
    files = sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not files:
        raise BaseModelMismatch(
            f"base model {name_or_path!r}: no weights files ({', '.join(WEIGHT_SUFFIXES)}) in {directory}"
        )
    weights = hashlib.sha256()
    for path in files:
        _hash_file(path, weights)
    record = {
        "config": hashlib.sha256(canonical.encode()).hexdigest(),
        "weights": weights.hexdigest(),
        "weights_bytes": sum(p.stat().st_size for p in files),
        "files": len(files),
    }
    source = _converted_from(directory)
    if source is not None:
        record["source"] = source
    return record


def _converted_from(directory: Path) -> str | None:
    """The sha256 of the GGUF file a converted base came from (``gguf_convert.SOURCE_FILE``), if any."""
    path = directory / SOURCE_FILE
    if not path.is_file():
        return None
    try:
        sha = json.loads(path.read_text(encoding="utf-8")).get("sha256")
    except (OSError, ValueError, AttributeError) as err:
        raise BaseModelMismatch(f"base model {str(directory)!r}: unreadable {SOURCE_FILE} ({err})") from err
    if not isinstance(sha, str):
        raise BaseModelMismatch(f"base model {str(directory)!r}: {SOURCE_FILE} has no sha256")
    return sha


def check_base_model(
    recorded: dict[str, Any], name_or_path: str, where: str, accept_new_base: bool = False
) -> dict[str, Any]:
    """Compare the base at ``name_or_path`` with the manifest's ``base_model`` record.

    Returns the record to keep: the recorded one with the new location when the fingerprints
    match (a moved base), the new one when there was none (a run from before fingerprints) or
    when ``accept_new_base`` overrides a mismatch (logged by the caller). Raises
    ``BaseModelMismatch`` naming both locations and what differs otherwise.
    """
    current = {"location": base_location(name_or_path), "fingerprint": fingerprint(name_or_path)}
    old = recorded.get("fingerprint") if isinstance(recorded, dict) else None
    if not old or accept_new_base:
        return current
    differ = [key for key in ("config", "weights") if old.get(key) != current["fingerprint"].get(key)]
    if "source" in old and old["source"] != current["fingerprint"].get("source"):
        differ.append("source GGUF checksum")
    if differ:
        raise BaseModelMismatch(
            f"{where}: base model {current['location']!r} is not the one this run's stacks were trained on "
            f"({recorded.get('location')!r}): its {' and '.join(differ)} differ. Give the original base, or, "
            f"if this base is deliberately the same model in another form, pass {ACCEPT_FLAG}"
        )
    return {**recorded, "location": current["location"]}
