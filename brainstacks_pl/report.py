"""Terminal reports for the end of a run (the CLI's output, not library logging)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from brainstacks_pl.callbacks.forgetting import MODES, ForgettingMatrix
from brainstacks_pl.storage import MANIFEST_NAME

__all__ = ["print_forgetting_report", "print_phase_summary"]


def print_forgetting_report(forgetting: ForgettingMatrix, run_dir: Path, logger=None) -> None:
    """The forgetting matrix in its three modes and where the run's files and logs are."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    domains = forgetting.data["domains"]
    for mode in MODES:
        table = Table(title=f"forgetting matrix, {mode}: val loss (columns) after each domain (rows)")
        table.add_column("after")
        for domain in domains:
            table.add_column(domain, justify="right")
        for row in forgetting.data["rows"]:
            table.add_row(row["after"], *[f"{row[mode][d]:.4f}" if d in row[mode] else "" for d in domains])
        console.print(table)
    console.print(f"run directory: {run_dir}  ({MANIFEST_NAME}, stacks/, forgetting_matrix.json)")
    if logger is not None:
        root = (
            Path(logger.log_dir).parent if Path(logger.log_dir).parent.name == "tensorboard" else Path(logger.log_dir)
        )
        console.print(
            f"TensorBoard logs: {logger.log_dir} (this phase; one "
            f"run per fit below it)  ->  tensorboard --logdir {root}"
        )


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value + 0.0:.4g}"  # + 0.0: no "-0" for a negated zero
    return str(value)


def print_phase_summary(
    title: str, rows: Sequence[tuple[str, Any, Any]], artifacts: dict[str, Any], notes: Sequence[str] = ()
) -> None:
    """The table a phase ends with: held-out ``(metric, before, after)`` rows, then where its
    artifacts are (``{what: path}``) and any notes (rich, on stdout, like the forgetting matrix)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=title)
    table.add_column("held-out metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for metric, before, after in rows:
        table.add_row(metric, _cell(before), _cell(after))
    if rows:
        console.print(table)
    else:
        console.print(title)
    for what, where in artifacts.items():
        console.print(f"{what}: {where}", soft_wrap=True, highlight=False)  # a path stays one line
    for note in notes:
        console.print(note, soft_wrap=True, highlight=False)


def rerun_note(what: str, manifest, key: str, settings: dict) -> str:
    """The line a rerun with nothing to do prints: what is finished and which settings it ignores."""
    from brainstacks_pl.phase import settings_note

    return f"{what}: already finished, nothing to do. {settings_note(manifest, key, settings)}"


def print_sft_summary(manifest, run_dir: Path, settings: dict, rerun: bool) -> None:
    """Per domain: validation loss before its first stack and after its last; where the stacks are."""
    rows = []
    for domain in manifest.domains:
        records = [r for r in manifest.stacks if r.domain == domain and r.phase == "sft"]
        if records:
            rows.append(
                (
                    f"{domain} val loss ({len(records)} stack{'s' if len(records) > 1 else ''})",
                    records[0].start_val_loss,
                    records[-1].loss_at_freeze,
                )
            )
    notes = (
        [rerun_note(f"SFT of {', '.join(manifest.completed_domains)} in {run_dir}", manifest, "sft", settings)]
        if rerun
        else []
    )
    artifacts = {"stacks": run_dir / "stacks", "manifest": run_dir / MANIFEST_NAME}
    print_phase_summary(
        "SFT: each domain's validation loss before its first stack and after its last", rows, artifacts, notes
    )
