"""What a run's names and paths may be: domain names that can safely become file names, and
relative paths that stay inside the run directory.

A run directory is input like any other (shared, copied, edited by hand), so every name and
path read from it goes through here before it touches the file system.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from brainstacks_pl.errors import StackFileError, UserError

__all__ = ["DOMAIN_PATTERN", "UnsafeNameError", "check_domain_name", "inside"]


DOMAIN_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""A domain name: it becomes part of file names (``stacks/<domain>-r<k>.safetensors``), so
letters, digits, ``_`` and ``-`` only, at most 64 characters, no path separator, no dot."""


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
