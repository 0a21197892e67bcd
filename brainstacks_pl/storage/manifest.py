"""The run manifest (``RUN/manifest.json``): the run directory's table of contents, parsed once
into typed, validated records (``manifest_schema.py``) and written atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from brainstacks_pl.errors import StackFileError
from brainstacks_pl.layers.stack_format import file_shapes
from brainstacks_pl.prompts import DEFAULT_PROMPT_TEMPLATE
from brainstacks_pl.storage.atomic import atomic_write_json
from brainstacks_pl.storage.manifest_schema import StackRecord, manifest_fields

__all__ = ["MANIFEST_NAME", "SCHEMA_VERSION", "Manifest"]

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


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
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    """The template the stacks were trained with (``prompts.py``: ``chat`` or a plain text);
    every later phase, ``evaluate``, ``generate``, ``chat`` and ``serve`` render prompts with it.
    Runs from before it was recorded were trained with the plain default."""
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
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise StackFileError(f"{path}: malformed manifest, unknown fields {unknown}")
        return cls(**manifest_fields(raw, Path(run_dir), str(path)))

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
