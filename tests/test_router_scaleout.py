"""The router phase beyond one plain process: DDP with 2 CPU ranks, and a SIGKILL during discovery."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_helpers import tensors_digest, write_rank_entry
from fault_helpers import kill_group, launch, run_to_completion, subprocess_env, wait_for
from lightning.pytorch.callbacks import Callback
from test_router import router_args, sft_run  # noqa: F401 (sft_run is a fixture: a tiny finished SFT run)

from brainstacks_pl.storage import Manifest, load_tensors

pytestmark = pytest.mark.multiprocess  # spawns ranks: `-m 'not multiprocess'` skips it


class RouterDigest(Callback):
    """Each rank records a digest of its router's weights when the fit ends."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_fit_end(self, trainer, pl_module):
        write_rank_entry(self.out_dir, trainer.global_rank, tensors_digest(pl_module.router.state_dict()))


def test_router_phase_under_two_rank_ddp(sft_run, tmp_path):
    run_dir, digests = tmp_path / "run", tmp_path / "digests"
    shutil.copytree(sft_run, run_dir)
    stacks_before = {p.name: p.read_bytes() for p in (run_dir / "stacks").iterdir()}
    args = [
        sys.executable,
        "-m",
        "brainstacks_pl",
        *router_args(run_dir, "--trainer.strategy", "ddp", "--trainer.devices", "2"),
        f"--trainer.callbacks=[{{class_path: test_router_scaleout.RouterDigest, init_args: {{out_dir: {digests}}}}}]",
    ]
    done = subprocess.run(args, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    assert (digests / "rank0.json").read_text() == (digests / "rank1.json").read_text(), (
        "DDP keeps the router identical on both ranks"
    )
    record = Manifest.load(run_dir).extra["router"]
    tensors, _ = load_tensors(run_dir / record["file"], expected_sha256=record["sha256"])
    assert all(torch.isfinite(t).all() for t in tensors.values())
    report = json.loads((run_dir / "router" / "routing_report.json").read_text())
    assert set(report["per_source"]) == {"chat", "math"}
    assert {p.name: p.read_bytes() for p in (run_dir / "stacks").iterdir()} == stacks_before, (
        "the router phase never touches stacks"
    )
    assert not (run_dir / ".lock").exists() and not (run_dir / "router" / "work").exists()


def router_file(run_dir: Path) -> bytes:
    return (run_dir / Manifest.load(run_dir).extra["router"]["file"]).read_bytes()


def test_router_killed_during_discovery_resumes_to_the_same_router(sft_run, tmp_path):
    # Discovery writes its cache after every chunk of 2 examples; the kill lands after the first.
    small_chunks = ("--model.discovery_chunk", "2")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    shutil.copytree(sft_run, reference)
    shutil.copytree(sft_run, killed)
    run_to_completion(router_args(reference, *small_chunks), tmp_path, tmp_path / "reference.log")

    proc = launch(router_args(killed, *small_chunks), tmp_path, tmp_path / "killed.log")
    cache = killed / "router" / "discovery" / "chat.jsonl"
    assert wait_for(proc, cache.is_file), "discovery never wrote its cache"
    kill_group(proc)
    assert "router" not in Manifest.load(killed).extra, "the killed phase recorded no router"
    run_to_completion(router_args(killed, *small_chunks), tmp_path, tmp_path / "killed.log")
    assert router_file(killed) == router_file(reference)
