"""Where a benchmark's numbers go: one JSON file per run, written the same way by every benchmark."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(report: dict, out: str | Path) -> Path:
    """Write ``report`` as indented JSON to ``out`` (its folder created); return the path, so the
    committed results under ``benchmarks/results/`` diff cleanly from one run to the next."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out
