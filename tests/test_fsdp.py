"""QLoRA under FSDP2 (Lightning's ModelParallelStrategy) on 2 CPU processes: same stacks as DDP, resumable.

The curriculum adds a new stack to the same model every round; ``configure_model`` shards
the base once and each new stack as its own FSDP unit (brainstacks_pl/sharding.py). FSDP
averages the gradients of the same per-rank batches as DDP does, so with fp32 on the CPU
the stack files come out byte-identical to a DDP run. The base is NF4 (bitsandbytes on the
CPU): its packed 4-bit weights are sharded too, and each layer's quant state survives the
all-gather. (The dense base gives the same byte-identity; checked by hand, see docs/scaling.md.)
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fault_helpers import fit_args, make_model_dir, stack_bytes, subprocess_env

pytestmark = pytest.mark.multiprocess  # spawns ranks: `-m 'not multiprocess'` skips it

FSDP2 = (
    "--trainer.strategy={class_path: lightning.pytorch.strategies.ModelParallelStrategy, "
    "init_args: {data_parallel_size: 2, tensor_parallel_size: 1, save_distributed_checkpoint: false}}"
)


def fit(model_dir, run_dir, cwd, *extra: str) -> subprocess.CompletedProcess:
    # One domain, two rounds: the second round adds a stack to an already sharded model.
    one_domain = '--data.domains=[{name: chat, path: "demo:chat", max_examples: 32}]'
    args = fit_args(
        model_dir, run_dir, "--trainer.devices", "2", "--model.quantization", "nf4", one_domain, *extra, batch_size=2
    )
    return subprocess.run(
        [sys.executable, "-m", "brainstacks_pl", *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_qlora_fsdp2_two_ranks_resume_and_match_ddp_byte_for_byte(tmp_path):
    model_dir = make_model_dir(tmp_path / "tiny")
    ddp = fit(model_dir, tmp_path / "ddp", tmp_path, "--trainer.strategy", "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    run_dir, digests = tmp_path / "fsdp", tmp_path / "digests"
    digest = f"--trainer.callbacks+={{class_path: ddp_helpers.StackDigest, init_args: {{out_dir: {digests}}}}}"
    kill = (
        "--trainer.callbacks+={class_path: test_sft_curriculum.KillAtStep, "
        "init_args: {domain: chat, round: 1, step: 3}}"
    )
    killed = fit(model_dir, run_dir, tmp_path, FSDP2, digest, kill)
    assert killed.returncode != 0 and "killed at chat round 1 step 3" in killed.stderr
    assert (run_dir / "rounds" / "chat-r1" / "checkpoints" / "last.ckpt").is_file(), (
        "the killed round left its epoch checkpoint"
    )
    resumed = fit(model_dir, run_dir, tmp_path, FSDP2, digest)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    rank0 = json.loads((digests / "rank0.json").read_text())
    rank1 = json.loads((digests / "rank1.json").read_text())
    assert len(rank0) == 2 and rank0 == rank1, "both ranks hold the same frozen stacks after every round"
    assert stack_bytes(run_dir) == stack_bytes(tmp_path / "ddp") and len(stack_bytes(run_dir)) == 2


def test_fsdp1_is_refused_with_the_fix_named():
    from lightning.pytorch.strategies import FSDPStrategy

    from brainstacks_pl.modules.sft import StackSFTModule

    module = StackSFTModule("unused", domains=["chat"])
    module.stacks = object()  # build() is skipped: the check is about the strategy only
    module._trainer = type("FakeTrainer", (), {"strategy": FSDPStrategy()})()
    with pytest.raises(ValueError, match="ModelParallelStrategy"):
        module.configure_model()


class FakeMesh:
    """Just what ``data_parallel_mesh`` reads of a DeviceMesh."""

    def __init__(self, sizes: dict[str, int]):
        self.mesh_dim_names, self.sizes = tuple(sizes), sizes

    def __getitem__(self, name: str):
        return type("SubMesh", (), {"size": lambda _: self.sizes[name], "name": name})()

    def size(self) -> int:
        return 1


def test_tensor_parallelism_is_refused_and_data_parallel_is_used():
    from brainstacks_pl.sharding import data_parallel_mesh

    assert data_parallel_mesh(FakeMesh({"data_parallel": 2, "tensor_parallel": 1})).name == "data_parallel"
    with pytest.raises(ValueError, match="tensor_parallel_size=2 is not supported"):
        data_parallel_mesh(FakeMesh({"data_parallel": 1, "tensor_parallel": 2}))
