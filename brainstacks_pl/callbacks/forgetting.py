"""The forgetting matrix: every trained domain's validation loss after every domain.

Three modes per entry: ``ungated`` (all stacks on), ``isolated`` (only that domain's
stacks) and ``as_frozen`` (exactly the stacks that were on when that domain finished:
its own and the earlier domains'). ``at_freeze`` keeps each domain's as-frozen loss from
the moment it finished; later as-frozen entries must equal it bit for bit, which is the
zero-forgetting guarantee in numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from brainstacks_pl.model import BrainstacksModel
from brainstacks_pl.storage import atomic_write_json
from brainstacks_pl.validation import evaluate_loss

__all__ = ["ForgettingMatrix"]

MODES = ("ungated", "isolated", "as_frozen")


class ForgettingMatrix:
    """Evaluates and records the forgetting matrix after each domain."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.data: dict[str, Any] = (
            json.loads(self.path.read_text()) if self.path.is_file() else {"domains": [], "rows": [], "at_freeze": {}}
        )

    def evaluate(
        self, stacks: BrainstacksModel, datamodule, finished_domain: str, device, logger=None, write: bool = True
    ) -> dict[str, Any]:

        order = stacks.domains
        trained = order[: order.index(finished_domain) + 1]
        row: dict[str, Any] = {"after": finished_domain}
        for mode in MODES:
            row[mode] = {}
            for domain in trained:
                loader = datamodule.val_dataloader_for(domain)
                if mode == "ungated":
                    context = stacks.ungated()
                elif mode == "isolated":
                    context = stacks.isolated([domain])
                else:
                    context = stacks.isolated(order[: order.index(domain) + 1])
                with context:
                    row[mode][domain] = evaluate_loss(stacks, loader, device)
        self.data["domains"] = trained
        self.data["rows"] = [r for r in self.data["rows"] if r["after"] != finished_domain] + [row]
        self.data["at_freeze"][finished_domain] = row["as_frozen"][finished_domain]
        if write:
            atomic_write_json(self.path, self.data)
        if logger is not None:
            self._log(logger, order.index(finished_domain))
        return row

    def matrix(self, mode: str) -> np.ndarray:
        """[after, evaluated] losses in curriculum order (NaN where not yet trained)."""
        domains = self.data["domains"]
        out = np.full((len(self.data["rows"]), len(domains)), np.nan)
        for i, row in enumerate(self.data["rows"]):
            for j, domain in enumerate(domains):
                out[i, j] = row[mode].get(domain, np.nan)
        return out

    def _log(self, logger, step: int) -> None:
        row = self.data["rows"][-1]
        logger.log_metrics(
            {f"forgetting/{mode}/{domain}": loss for mode in MODES for domain, loss in row[mode].items()}, step=step
        )
        from brainstacks_pl.figures import forgetting_figure, log_figure

        after = [r["after"] for r in self.data["rows"]]
        log_figure(
            logger,
            "forgetting/matrix",
            forgetting_figure({m: self.matrix(m) for m in MODES}, after, self.data["domains"]),
            step,
        )
        experiment = getattr(logger, "experiment", None)
        if experiment is not None and hasattr(experiment, "add_text"):
            experiment.add_text("forgetting/table", self.to_markdown(), global_step=step)

    def to_markdown(self, mode: str = "ungated") -> str:
        domains = self.data["domains"]
        lines = [f"| after \\ eval ({mode}) | " + " | ".join(domains) + " |", "|---" * (len(domains) + 1) + "|"]
        for row in self.data["rows"]:
            cells = [f"{row[mode][d]:.4f}" if d in row[mode] else "" for d in domains]
            lines.append(f"| {row['after']} | " + " | ".join(cells) + " |")
        return "\n".join(lines)
