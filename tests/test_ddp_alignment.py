"""DDP with 2 CPU processes (gloo) for the alignment phases: both ranks end with the same stack.

DPO runs automatic optimisation (DDP's reducer all-reduces each backward); GRPO runs manual
optimisation with several updates per generated batch (``manual_backward`` re-arms the reducer
for each of them). Each rank samples and scores its own shard of prompts; the all-reduced
gradients keep the stacks bit-identical, and only rank 0 writes the stack file.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from test_grpo import make_sft_run

from brainstacks_pl.storage import Manifest, load_tensors

pytestmark = pytest.mark.multiprocess  # spawns ranks: `-m 'not multiprocess'` skips it

REPO = Path(__file__).resolve().parents[1]


class ActiveStackDigest(Callback):
    """At the end of the fit (after ``BestStackCallback`` restored its snapshot: what is written),
    each rank records a digest of its active stack and the rank its writer gate sees."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_fit_end(self, trainer, pl_module):
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.stacks.active_state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.float().cpu().numpy().tobytes())
        self.out_dir.mkdir(parents=True, exist_ok=True)
        entry = {
            "digest": digest.hexdigest(),
            "steps": trainer.global_step,
            "writer_rank": getattr(rank_zero_only, "rank", 0),
        }
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(entry))


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    return make_sft_run(
        tmp_path_factory.mktemp("ddp_alignment"), "--trainer.limit_train_batches", "1", "--data.max_seq_len", "64"
    )


def run_ddp_phase(run_dir: Path, digests: Path, config: str, *extra: str) -> None:
    args = [
        sys.executable,
        "-m",
        "brainstacks_pl",
        "fit",
        "--config",
        str(REPO / "configs" / config),
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.max_epochs",
        "2",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        f"--trainer.callbacks=[{{class_path: test_ddp_alignment.ActiveStackDigest, "
        f"init_args: {{out_dir: {digests}}}}}]",
        *extra,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
        "OMP_NUM_THREADS": "1",
    }  # this tree's package, not an installed one
    done = subprocess.run(args, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def check_ranks(run_dir: Path, digests: Path, phase: str, domain: str, steps: int) -> None:
    rank0, rank1 = (json.loads((digests / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["digest"] == rank1["digest"], f"{phase}: the ranks' stacks differ"
    assert rank0["steps"] == rank1["steps"] == steps
    assert (rank0["writer_rank"], rank1["writer_rank"]) == (0, 1), "only rank 0 passes the writer gate"
    manifest = Manifest.load(run_dir)
    assert [(s.domain, s.phase) for s in manifest.stacks] == [("chat", "sft"), ("math", "sft"), (domain, phase)]
    assert len(manifest.extra["alignment"]) == 1, "one summary: rank 1 never saved the manifest"
    record = manifest.stacks[-1]
    load_tensors(run_dir / record.file, expected_sha256=record.sha256)
    assert sorted(p.name for p in (run_dir / "stacks").iterdir()) == sorted(
        s.file.rsplit("/", 1)[-1] for s in manifest.stacks
    )


def copy_run(sft_run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(sft_run, tmp_path / "run"))


def test_two_rank_ddp_dpo_keeps_ranks_identical(sft_run, tmp_path):
    run_dir, digests = copy_run(sft_run, tmp_path), tmp_path / "digests"
    run_ddp_phase(
        run_dir,
        digests,
        "dpo_demo.yaml",
        "--data.max_examples",
        "24",
        "--data.batch_size",
        "2",
        "--data.max_val_examples",
        "4",
        "--data.max_prompt_len",
        "32",
        "--data.max_seq_len",
        "64",
    )
    check_ranks(run_dir, digests, "dpo", "chat", steps=4)


def test_two_rank_ddp_grpo_keeps_ranks_identical(sft_run, tmp_path):
    run_dir, digests = copy_run(sft_run, tmp_path), tmp_path / "digests"
    run_ddp_phase(
        run_dir,
        digests,
        "grpo_demo.yaml",
        "--model.group_size",
        "2",
        "--model.max_new_tokens",
        "4",
        "--model.val_max_new_tokens",
        "4",
        "--data.max_examples",
        "24",
        "--data.batch_size",
        "1",
        "--data.eval_batch_size",
        "2",
        "--data.max_val_examples",
        "4",
    )
    check_ranks(run_dir, digests, "grpo", "math", steps=2 * 2 * 2)
