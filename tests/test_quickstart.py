"""examples/quickstart.py (the README's Python walk-through) runs as shipped."""

from __future__ import annotations

import runpy
from pathlib import Path

from brainstacks_pl.storage import load_tensors

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_trains_saves_and_routes_a_stack(tmp_path, capsys):
    quickstart = runpy.run_path(str(REPO / "examples" / "quickstart.py"))  # not as __main__: call main below
    result = quickstart["main"](steps=3, out_dir=str(tmp_path))
    out = capsys.readouterr().out
    assert "step 2: loss" in out and "aux_loss" in out and "(x 0.01 = " in out
    tensors, _ = load_tensors(result["file"], expected_sha256=None)
    assert len(tensors) > 0 and Path(result["file"]).parent == tmp_path
    # Three steps on two examples: the routed stack fits them far better than the base does.
    assert result["routed_loss"] < 0.5 * result["base_loss"]
    assert abs(result["first_loss"] - result["base_loss"]) < 1e-4 * result["base_loss"]  # B = 0: a new stack is a no-op
