"""DDP with 2 CPU processes (gloo) trains the same stacks on every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from brainstacks_pl.storage import Manifest
from conftest import save_tiny_model

REPO = Path(__file__).resolve().parents[1]


def test_two_rank_ddp_curriculum_keeps_ranks_identical(tmp_path):
    model_dir = tmp_path / "tiny"
    save_tiny_model(model_dir)
    run_dir, digests = tmp_path / "run", tmp_path / "digests"
    args = [
        sys.executable, "-m", "brainstacks_pl", "fit",
        "--config", str(REPO / "configs" / "demo.yaml"),
        "--model.model_name_or_path", str(model_dir),
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.strategy", "ddp", "--trainer.devices", "2",
        "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
        "--trainer.enable_progress_bar", "false",
        "--data.max_seq_len", "96", "--data.batch_size", "2", "--data.max_val_examples", "8",
        '--data.domains=[{name: chat, path: "demo:chat", max_examples: 32}, {name: math, path: "demo:math", max_examples: 32}]',
        "--boosting.max_rounds", "2", "--boosting.min_loss_delta", "-1.0",
        f"--trainer.callbacks=[{{class_path: ddp_helpers.StackDigest, init_args: {{out_dir: {digests}}}}}]",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = json.loads((digests / "rank0.json").read_text())
    rank1 = json.loads((digests / "rank1.json").read_text())
    assert len(rank0) == 4 and rank0 == rank1, "every round ends with bit-identical frozen stacks on both ranks"
    manifest = Manifest.load(run_dir)
    assert [(s.domain, s.round) for s in manifest.stacks] == [("chat", 0), ("chat", 1), ("math", 0), ("math", 1)]
    assert manifest.completed_domains == ["chat", "math"]
