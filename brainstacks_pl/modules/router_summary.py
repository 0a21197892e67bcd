"""What the router phase prints: the table it ends with, and the line of a rerun with nothing to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from brainstacks_pl.errors import UserError
from brainstacks_pl.phase import describe_changes
from brainstacks_pl.report import print_phase_summary
from brainstacks_pl.routing.artifact import ROUTER_DIR, load_router
from brainstacks_pl.routing.novelty import NoveltyDetector
from brainstacks_pl.storage import Manifest

__all__ = ["gap_note", "print_router_summary", "router_is_finished"]


def _artifacts(root: Path) -> dict[str, Path]:
    return {"router": root / ROUTER_DIR, "routing report": root / ROUTER_DIR / "routing_report.json"}


def router_is_finished(root: Path, settings: dict[str, Any], is_writer: bool = True) -> bool:
    """True (and a summary saying so) when the run's router was trained with these ``settings`` and
    still loads; otherwise log why it is trained (again) and return False."""
    if not Manifest.exists(root) or not (manifest := Manifest.load(root)).extra.get("router"):
        return False
    recorded = manifest.extra.get("settings", {}).get("router")
    try:
        _, spec, _ = load_router(root, manifest)
    except UserError as err:
        rank_zero_info(f"router: training it again; the one in {root / ROUTER_DIR} does not load ({err})")
        return False
    if recorded is None:
        rank_zero_info(f"router: training it again; the settings of {root / ROUTER_DIR} were not recorded")
        return False
    changed = describe_changes(recorded, settings)
    if changed:
        rank_zero_info(f"router: training it again with changed settings: {changed}")
        return False
    if is_writer:
        epoch = (spec.best or {}).get("epoch")
        print_phase_summary(
            f"router over {', '.join(spec.domains)}: already finished, nothing to do (same settings)",
            [],
            _artifacts(root),
            [
                f"best epoch {epoch}; to train it again change a setting (e.g. --seed_everything) "
                f"or delete {root / ROUTER_DIR}"
            ],
        )
    return True


def gap_note(novelty: NoveltyDetector | None, false_gap_rate: float | None, n_held_out: int) -> str:
    if novelty is None:
        return "capability gap: no novelty detector (false_gap_rate: null); only the gate fires the gap"
    return (
        f"capability gap: prompts with novelty above {novelty.threshold:.3f} get no stack (calibrated to fire on "
        f"at most {false_gap_rate:.0%} of the {n_held_out} held-out in-domain prompts)"
    )


def print_router_summary(
    root: Path,
    domains: list[str],
    before: dict[str, float],
    after: dict[str, float],
    best: dict,
    n_train: int,
    n_val: int,
    notes: list[str],
) -> None:
    """Untrained vs best epoch on the validation rows, where the router and its report are, the notes."""
    epoch = f"best epoch {best['epoch']}" if "epoch" in best else "no validation epoch"
    title = f"router over {', '.join(domains)}: {n_train} train / {n_val} val examples, untrained vs {epoch}"
    rows = [(k, before[k], after[k]) for k in before]
    print_phase_summary(title, rows, _artifacts(root), notes)
