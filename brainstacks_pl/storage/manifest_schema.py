"""The manifest's schema: the record of one frozen stack and the validation of a parsed
``manifest.json`` (types, ranges, names, files inside the run, no duplicates), every problem a
``StackFileError`` naming it (docs/run_directory.md).

Kept apart from ``Manifest`` (what a run does with its table of contents): this is what a
manifest read from disk must look like before anything trusts it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainstacks_pl.errors import StackFileError
from brainstacks_pl.prompts import DEFAULT_PROMPT_TEMPLATE, check_resolved_template
from brainstacks_pl.storage.names import check_domain_name, inside

__all__ = ["StackRecord", "manifest_fields"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


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


def manifest_fields(raw: dict[str, Any], root: Path, where: str) -> dict[str, Any]:
    """The validated fields of a ``Manifest`` (its caller has refused unknown fields and a wrong
    ``schema_version`` already); a ``StackFileError`` names the first problem."""
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
    template = _typed(raw.get("prompt_template", DEFAULT_PROMPT_TEMPLATE), (str,), "prompt_template", where)
    try:
        check_resolved_template(template)
    except ValueError as err:
        raise StackFileError(f"{where}: {err}") from None
    extra = _typed(raw.get("extra", {}), (dict,), "extra", where)
    if "router" in extra:
        _file_entry(extra["router"], root, "extra.router", where)
        inside(root, extra["router"].get("json"), f"{where}: extra.router.json")
    return dict(
        base_model_id=base,
        layer_shapes=shapes,
        stack_config=config,
        domains=list(domains),
        stacks=stacks,
        completed_domains=list(completed),
        null_space=null_space,
        base_model=base_model,
        prompt_template=template,
        extra=extra,
    )
