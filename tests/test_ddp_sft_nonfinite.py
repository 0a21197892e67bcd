"""2-rank DDP (gloo, CPU) SFT with a NaN loss planted on rank 1 only: every rank skips that step.

A rank that skipped alone (``training_step`` returning None) would run no backward while the
other rank's backward waits in DDP's gradient all-reduce: the all-reduce pairs with the wrong
step or hangs. ``StackSFTModule.training_step`` agrees the decision across ranks, so both skip,
both take the same later steps and end with bit-identical stacks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from ddp_helpers import tensors_digest, write_rank_entry
from fault_helpers import REPO, fit_args, make_model_dir
from lightning.pytorch.callbacks import Callback

from brainstacks_pl.storage import Manifest, load_tensors


class PlantNaN(Callback):
    """Rank 1's first training batch gets NaN logits; at the end each rank records its stack digest."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.handle = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == 1 and trainer.global_step == 0 and batch_idx == 0:
            self.handle = pl_module.stacks.model.lm_head.register_forward_hook(
                lambda module, args, output: output * float("nan")
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def on_fit_end(self, trainer, pl_module):
        adam_steps = {int(state["step"]) for state in trainer.optimizers[0].state.values()}
        entry = {
            "digest": tensors_digest(pl_module.stacks.active_state_dict()),
            "adam_steps": sorted(adam_steps),
            "nonfinite_steps": pl_module.nonfinite_steps,
        }
        write_rank_entry(self.out_dir, trainer.global_rank, entry)


def test_nan_on_one_rank_is_skipped_by_every_rank(tmp_path):
    model_dir = make_model_dir(tmp_path / "tiny")
    run_dir, digests = tmp_path / "run", tmp_path / "digests"
    args = [
        sys.executable,
        "-m",
        "brainstacks_pl",
        *fit_args(
            model_dir,
            run_dir,
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "3",
            "--trainer.enable_progress_bar",
            "false",
        ),
        '--data.domains=[{name: math, path: "demo:math", max_examples: 32}]',
        "--boosting.max_rounds",
        "1",
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--data.batch_size",
        "2",
        f"--trainer.callbacks=[{{class_path: test_ddp_sft_nonfinite.PlantNaN, init_args: {{out_dir: {digests}}}}}]",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (json.loads((digests / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["nonfinite_steps"] == rank1["nonfinite_steps"] == 1, (rank0, rank1)
    assert rank0["adam_steps"] == rank1["adam_steps"] == [2], (
        "3 batches: the optimizer stepped on 2, the NaN one skipped by both ranks"
    )
    assert rank0["digest"] == rank1["digest"], "the ranks' stacks differ"
    record = Manifest.load(run_dir).stacks[0]
    tensors, _ = load_tensors(run_dir / record.file, expected_sha256=record.sha256)
    assert all(bool(torch.isfinite(t).all()) for t in tensors.values())
