"""The one place that turns whatever names a base into the local directory every command loads.

* ``brainstacks-demo`` names the tiny Llama this project pretrained and ships in
  ``brainstacks_pl/assets/demo_base`` (``demo_base.py`` builds it). Loading a model never
  trains one: when the asset is missing from an install, resolving the name is an error that
  says how to rebuild it (``python scripts/build_demo_base.py``).
* A short name of ``gguf_convert.PACKAGED_BASES`` (``smollm2-135m-instruct``) or a path to a
  ``.gguf`` file resolves to its converted, cached Hugging Face directory (converted once).
* Anything else (a local directory, a hub id) is returned unchanged.
"""

from __future__ import annotations

from pathlib import Path

from brainstacks_pl.errors import UserError
from brainstacks_pl.gguf_convert import PACKAGED_BASES, convert_gguf, packaged_gguf

__all__ = ["DEMO_BASE_NAME", "REQUIRED_FILES", "is_complete", "resolve_model_name", "shipped_demo_base_path"]

DEMO_BASE_NAME = "brainstacks-demo"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "brainstacks_demo.json")


def shipped_demo_base_path() -> Path:
    """Where the package ships the prebuilt base: ``brainstacks_pl/assets/demo_base``."""
    return Path(__file__).resolve().parent / "assets" / "demo_base"


def is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in REQUIRED_FILES)


def resolve_model_name(name: str) -> str:
    """The local directory of a base name (see the module docstring); other names unchanged."""
    if name in PACKAGED_BASES:
        return str(convert_gguf(packaged_gguf(name)))
    if str(name).endswith(".gguf"):
        return str(convert_gguf(name))
    if name != DEMO_BASE_NAME:
        return name
    shipped = shipped_demo_base_path()
    if not is_complete(shipped):
        missing = [f for f in REQUIRED_FILES if not (shipped / f).is_file()]
        raise UserError(
            f"{DEMO_BASE_NAME}: the shipped demo base is incomplete ({shipped} lacks {', '.join(missing)}); "
            "rebuild it with `python scripts/build_demo_base.py` or reinstall the package"
        )
    return str(shipped)
