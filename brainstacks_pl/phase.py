"""What the CLI hands a training phase: a run directory, a trainer factory and a logger.

``brainstacks fit`` works for every phase. A LightningModule that defines
``run_phase(context: PhaseContext)`` drives its own fits (the SFT curriculum runs one per
boosting round; the router phase first discovers its targets); any other LightningModule
gets one plain ``Trainer.fit``. Keeping this contract small is what lets each phase live in
its own module without the CLI knowing about it.

The CLI always parses its forced callbacks (``FORCED_CALLBACKS``: ``--best_stack.*``,
``--boosting.*``, ``--null_space.*``), so every shipped config parses with one parser. Which
of them a phase's trainers actually carry is the phase's call: a LightningModule declares
``phase_callbacks`` (a class attribute, a tuple of those config keys); without it, it gets all
of them (the SFT curriculum). A phase that does not use a callback must not carry it, rather
than remove it from a built trainer by hand: ``ResidualBoosting`` freezes SFT rounds and
measures LM loss on an LM data module, which an alignment phase has neither of. Likewise a
phase that keeps no round checkpoint asks the factory for a trainer without one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from lightning.pytorch.loggers import Logger

from brainstacks_pl.seeds import derive_seed

if TYPE_CHECKING:
    from brainstacks_pl.run import RunDirectory

__all__ = [
    "FORCED_CALLBACKS",
    "DomainStart",
    "PhaseContext",
    "phase_callbacks",
    "stack_seed",
    "flatten_settings",
    "changed_settings",
    "describe_changes",
    "record_settings",
    "settings_note",
]

# Settings that say where a phase runs or how it reports, not what it trains.
_NOT_SETTINGS = (
    "config",
    "ckpt_path",
    "accept_new_base",
    "trainer.default_root_dir",
    "trainer.logger",
    "trainer.callbacks",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
)

FORCED_CALLBACKS = ("best_stack", "boosting", "null_space")
"""Config keys of the callbacks the CLI parses for every phase."""


def stack_seed(seed: int, domain_index: int, round: int) -> int:
    """Initialisation seed of a stack: a function of its place in the curriculum only, so a
    resumed run, another rank and an alignment phase all build the same stack."""
    return derive_seed(seed, "stack", domain_index, round)


def phase_callbacks(module: L.LightningModule) -> tuple[str, ...]:
    """The forced callbacks ``module``'s trainers carry: its ``phase_callbacks``, else all of them."""
    declared = getattr(module, "phase_callbacks", None)
    if declared is None:
        return FORCED_CALLBACKS
    unknown = sorted(set(declared) - set(FORCED_CALLBACKS))
    if unknown:
        raise ValueError(
            f"{type(module).__name__}.phase_callbacks names {unknown}; "
            f"the CLI's forced callbacks are {list(FORCED_CALLBACKS)}"
        )
    return tuple(declared)


@dataclass
class PhaseContext:
    run_dir: Path
    """The run directory (``--trainer.default_root_dir``): manifest, stacks, logs."""
    trainer_factory: Callable[..., L.Trainer]
    """``trainer_factory(work_dir, checkpoint=True)``: a fresh Trainer whose own files go under
    ``work_dir``; it carries the user's callbacks and exactly the forced callbacks in
    ``callbacks``, and with ``checkpoint`` the round checkpoint (``checkpoints/last.ckpt``, what
    a rerun resumes from). A phase that resumes nothing (the router) asks for one without it,
    which also leaves out any ``ModelCheckpoint`` the user configured."""
    datamodule: L.LightningDataModule | None
    logger: Logger | None
    """The phase's logger (``RUN/tensorboard/<phase>``: phase-level figures and numbers); each
    fit's trainer logs into its own run below it (``<phase>/<fit>``), unless the user configured
    a logger, which every fit then shares."""
    callbacks: dict[str, L.Callback]
    """The forced callbacks this phase uses (``phase_callbacks``), by config key."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The phase's resolved options as dotted keys (``flatten_settings``): recorded in the
    manifest when the phase finishes, compared on a rerun that has nothing to do."""
    accept_new_base: bool = False
    """``--accept_new_base true``: the run's base model may have changed (``fingerprint.py``)."""


@dataclass(frozen=True)
class DomainStart:
    """What a curriculum domain hook (``on_domain_start``) gets before a domain's first round."""

    domain: str
    domain_index: int
    previous_domains: list[str]
    """The domains trained before this one, in curriculum order."""
    stacks: Any
    """The ``BrainstacksModel``, with every earlier stack frozen."""
    datamodule: L.LightningDataModule
    run: RunDirectory
    device: Any
    logger: Logger | None


def flatten_settings(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"lr": 1}}`` -> ``{"model.lr": 1}``, JSON-safe values, bookkeeping keys left out."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if name in _NOT_SETTINGS:
            continue
        if isinstance(value, Mapping):
            out.update(flatten_settings(value, f"{name}."))
        else:
            out[name] = json.loads(json.dumps(value, default=str))
    return out


def changed_settings(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose value differs between a finished phase's settings and this run's."""
    return sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))


def record_settings(manifest, key: str, settings: Mapping[str, Any]) -> None:
    """Keep a finished phase's settings in ``manifest.extra["settings"][key]``."""
    if settings:
        manifest.extra.setdefault("settings", {})[key] = dict(settings)


def settings_note(manifest, key: str, settings: Mapping[str, Any]) -> str:
    """What a rerun with nothing to do says about the settings it ignores."""
    recorded = manifest.extra.get("settings", {}).get(key)
    if recorded is None or not settings:
        return "settings of the finished run were not recorded; any changed settings are ignored"
    changed = describe_changes(recorded, settings)
    if not changed:
        return "same settings as the finished run"
    return f"changed settings ignored (the phase is finished): {changed}"


def describe_changes(recorded: Mapping[str, Any], current: Mapping[str, Any], shown: int = 8) -> str:
    """``key: old -> new, ...`` for the first ``shown`` changed settings ("" when none changed)."""
    changed = changed_settings(recorded, current)
    text = ", ".join(f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in changed[:shown])
    return text + (f" and {len(changed) - shown} more" if len(changed) > shown else "")
