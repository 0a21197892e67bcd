"""Routing report: per source domain, which routes the oracle (discovery) and the router chose.

A route is the set of domains switched on, written ``chat+math`` (``base`` for none). The
router's route is ``{d : p_d >= decision_threshold}`` (0.5, the point its BCE targets are
split at; the inference gate 0.12 is looser on purpose). Output: JSON
(``RUN/router/routing_report.json``), a TensorBoard image (rows = source domains, columns =
domains, left panel oracle, right panel router: how often each domain is on) and a printed
table such as ``medical -> chat+medical 97%``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from brainstacks_pl.storage import atomic_write_json

__all__ = ["route_name", "build_routing_report", "write_routing_report", "print_routing_report", "log_routing_report"]


def route_name(route: Sequence[str]) -> str:
    return "+".join(route) if route else "base"


def _shares(routes: Sequence[Sequence[str]]) -> dict[str, float]:
    counts = Counter(route_name(r) for r in routes)
    return {name: count / len(routes) for name, count in counts.most_common()}


def build_routing_report(
    domains: Sequence[str],
    sources: Sequence[str],
    oracle: Sequence[Sequence[str]],
    router: Sequence[Sequence[str]] | None = None,
) -> dict[str, Any]:
    """``{domains, per_source: {source: {n, oracle: {route: share}, router: {...}, agreement}}}``."""
    report: dict[str, Any] = {"domains": list(domains), "per_source": {}}
    for source in dict.fromkeys(sources):
        rows = [i for i, s in enumerate(sources) if s == source]
        entry: dict[str, Any] = {"n": len(rows), "oracle": _shares([oracle[i] for i in rows])}
        if router is not None:
            entry["router"] = _shares([router[i] for i in rows])
            entry["agreement"] = sum(set(oracle[i]) == set(router[i]) for i in rows) / len(rows)
        report["per_source"][source] = entry
    return report


def write_routing_report(path: str | Path, report: dict[str, Any]) -> None:
    atomic_write_json(path, report)


def _top(shares: dict[str, float], k: int = 3) -> str:
    return ", ".join(f"{name} {share:.0%}" for name, share in list(shares.items())[:k])


def print_routing_report(report: dict[str, Any]) -> None:
    """A rich table: source domain -> the most frequent routes, oracle and router."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="routing report: source domain -> routes chosen (share of validation examples)")
    for column in ("source", "n", "oracle (discovery)", "router", "agreement"):
        table.add_column(column)
    for source, entry in report["per_source"].items():
        agreement = f"{entry['agreement']:.0%}" if "agreement" in entry else ""
        table.add_row(source, str(entry["n"]), _top(entry["oracle"]), _top(entry.get("router", {})), agreement)
    Console().print(table)


def log_routing_report(logger, report: dict[str, Any], step: int = 0) -> None:
    """Figure + markdown table in TensorBoard (no-op for loggers without ``experiment.add_figure``)."""
    from brainstacks_pl.figures import log_figure, routing_figure

    if not log_figure(logger, "router/selection_oracle_vs_router", routing_figure(report), step):
        return
    experiment = logger.experiment
    lines = ["| source | n | oracle | router | agreement |", "|---|---|---|---|---|"]
    for source, entry in report["per_source"].items():
        agreement = f"{entry['agreement']:.0%}" if "agreement" in entry else ""
        lines.append(
            f"| {source} | {entry['n']} | {_top(entry['oracle'])} | {_top(entry.get('router', {}))} | {agreement} |"
        )
    experiment.add_text("router/routing_report", "\n".join(lines), global_step=step)
