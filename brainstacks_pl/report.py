"""Terminal reports for the end of a run (the CLI's output, not library logging)."""

from __future__ import annotations

from pathlib import Path

from brainstacks_pl.callbacks.forgetting import MODES, ForgettingMatrix

__all__ = ["print_forgetting_report"]


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
    console.print(f"run directory: {run_dir}  (manifest.json, stacks/, forgetting_matrix.json)")
    if logger is not None:
        console.print(f"TensorBoard logs: {logger.log_dir}  ->  tensorboard --logdir {logger.log_dir}")
