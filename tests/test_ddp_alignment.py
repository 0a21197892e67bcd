"""DDP with 2 CPU processes (gloo) for the alignment phases: both ranks end with the same stack.

DPO runs automatic optimisation (DDP's reducer all-reduces each backward); GRPO runs manual
optimisation with several updates per generated batch (``manual_backward`` re-arms the reducer
for each of them). Each rank samples and scores its own shard of prompts; the all-reduced
gradients keep the stacks bit-identical, and only rank 0 writes the stack file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ddp_helpers import tensors_digest, write_rank_entry
from fault_helpers import TINY_FIT, assert_sft_then_phase, make_sft_run, phase_args, run_to_completion
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from brainstacks_pl.storage import load_tensors

pytestmark = pytest.mark.multiprocess  # spawns ranks: `-m 'not multiprocess'` skips it


class ActiveStackDigest(Callback):
    """At the end of the fit (after ``BestStackCallback`` restored its snapshot: what is written),
    each rank records a digest of its active stack and the rank its writer gate sees."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_fit_end(self, trainer, pl_module):
        entry = {
            "digest": tensors_digest(pl_module.stacks.active_state_dict()),
            "steps": trainer.global_step,
            "writer_rank": getattr(rank_zero_only, "rank", 0),
        }
        write_rank_entry(self.out_dir, trainer.global_rank, entry)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    return make_sft_run(
        tmp_path_factory.mktemp("ddp_alignment"), "--trainer.limit_train_batches", "1", "--data.max_seq_len", "64"
    )


TWO_RANKS = {**TINY_FIT, "trainer.strategy": "ddp", "trainer.devices": 2}


def run_ddp_phase(run_dir: Path, digests: Path, config: str, settings: dict[str, object]) -> None:
    """``configs/<config>`` continued from ``run_dir`` on two DDP ranks, each reporting its digest to ``digests``."""
    digest = (
        f"--trainer.callbacks=[{{class_path: test_ddp_alignment.ActiveStackDigest, init_args: {{out_dir: {digests}}}}}]"
    )
    args = phase_args(config, run_dir, {**TWO_RANKS, **settings}, digest)
    run_to_completion(args, run_dir.parent, run_dir.parent / "ddp.log")


def check_ranks(run_dir: Path, digests: Path, phase: str, domain: str, steps: int) -> None:
    rank0, rank1 = (json.loads((digests / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["digest"] == rank1["digest"], f"{phase}: the ranks' stacks differ"
    assert rank0["steps"] == rank1["steps"] == steps
    assert (rank0["writer_rank"], rank1["writer_rank"]) == (0, 1), "only rank 0 passes the writer gate"
    manifest = assert_sft_then_phase(run_dir, domain, phase)
    assert len(manifest.extra["alignment"]) == 1, "one summary: rank 1 never saved the manifest"
    record = manifest.stacks[-1]
    load_tensors(run_dir / record.file, expected_sha256=record.sha256)
    assert sorted(p.name for p in (run_dir / "stacks").iterdir()) == sorted(
        s.file.rsplit("/", 1)[-1] for s in manifest.stacks
    )


def copy_run(sft_run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(sft_run, tmp_path / "run"))


DPO = {
    "data.max_examples": 24,
    "data.batch_size": 2,
    "data.max_val_examples": 4,
    "data.max_prompt_len": 32,
    "data.max_seq_len": 64,
}
GRPO = {
    "model.group_size": 2,
    "model.max_new_tokens": 4,
    "model.val_max_new_tokens": 4,
    "data.max_examples": 24,
    "data.batch_size": 1,
    "data.eval_batch_size": 2,
    "data.max_val_examples": 4,
}


@pytest.mark.parametrize(
    "phase, settings, domain, steps",
    [("dpo", DPO, "chat", 4), ("grpo", GRPO, "math", 2 * 2 * 2)],  # GRPO: 2 updates per batch, 2 batches, 2 epochs
)
def test_two_rank_ddp_phase_keeps_ranks_identical(sft_run, tmp_path, phase, settings, domain, steps):
    run_dir, digests = copy_run(sft_run, tmp_path), tmp_path / "digests"
    run_ddp_phase(run_dir, digests, f"{phase}_demo.yaml", settings)
    check_ranks(run_dir, digests, phase, domain, steps)
