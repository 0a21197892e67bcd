"""Null-space projection: the solvers, the projections, the callback, and the curriculum through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import make_tiny_llama
from fault_helpers import tiny_sft_args
from lightning.pytorch.callbacks import Callback
from numerics import TINY_MODEL_DEPTH, assert_fp32_equivalent, fp32_tolerance

from brainstacks_pl.callbacks.nullspace import NullSpaceProjection
from brainstacks_pl.cli import cli_main
from brainstacks_pl.config import StackConfig
from brainstacks_pl.data import CurriculumDataModule
from brainstacks_pl.model import BrainstacksModel
from brainstacks_pl.modules.sft import evaluate_loss
from brainstacks_pl.nullspace import (
    collect_frozen_deltas,
    cosine_similarity_of_subspaces,
    energy_captured,
    leak,
    principal_directions,
    project_out,
)
from brainstacks_pl.storage import Manifest, load_tensors
from brainstacks_pl.tokenization import byte_tokenizer

LEAK_TOL = fp32_tolerance(torch.ones(()), 64)
"""||V^T B|| / ||B|| of an fp32 projection: rounding of 64-long products (~3e-5); unprojected it is > 1e-3."""

REPO = Path(__file__).resolve().parents[1]
DOMAINS = '[{name: chat, path: "demo:chat", max_examples: 40}, {name: math, path: "demo:math", max_examples: 40}]'
FP32 = StackConfig(frozen_dtype="float32")


def planted(n: int = 120, d: int = 96, rank: int = 12, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=torch.float64))[0]
    W = torch.linalg.qr(torch.randn(d, rank, generator=g, dtype=torch.float64))[0]
    s = torch.logspace(1, -1, rank, dtype=torch.float64)
    return ((U * s) @ W.T + noise * torch.randn(n, d, generator=g, dtype=torch.float64)).float()


# ---------------------------------------------------------------------------------------------- pure functions
@pytest.mark.parametrize("solver", ["gram", "randomized"])
def test_solvers_agree_with_full_svd_on_planted_low_rank_data(solver):
    D = planted(noise=1e-4)
    _, S, Vh = torch.linalg.svd(D.double(), full_matrices=False)
    principal = principal_directions(D, 12, solver)
    assert principal.V.shape == (96, 12)
    assert_fp32_equivalent(principal.V.T @ principal.V, torch.eye(12), 96, "V^T V")  # 96-long dot products
    tolerance = 1e-8 if solver == "gram" else 1e-6  # randomized runs in fp32 from a random sketch
    assert cosine_similarity_of_subspaces(principal.V, Vh[:12].T.float()) > 1 - tolerance
    assert_fp32_equivalent(principal.singular_values, S[:12], 120 + 96, "singular values")
    assert principal.energy >= 0.9999
    assert_fp32_equivalent(energy_captured(D, principal.V), principal.energy, 120 * 96, "energy")


@pytest.mark.parametrize("solver", ["gram", "randomized"])
def test_k_larger_than_the_rank_keeps_only_the_rank(solver):
    principal = principal_directions(planted(rank=5), 32, solver)
    assert principal.V.shape[1] == 5 and principal.energy > 1 - 1e-6
    empty = principal_directions(torch.zeros(10, 8), 4, solver)
    assert empty.V.shape == (8, 0) and empty.energy == 1.0


def test_project_out_leak_and_subspace_similarity():
    g = torch.Generator().manual_seed(0)
    V = torch.linalg.qr(torch.randn(64, 8, generator=g))[0]
    B = torch.randn(64, 16, generator=g)
    assert leak(B, V) > 0.1
    assert leak(project_out(B, V), V) < fp32_tolerance(
        torch.ones(()), 64
    )  # rounding of 64-long products; unprojected: > 0.1
    assert leak(torch.zeros(64, 16), V) == 0.0 and leak(B, torch.empty(64, 0)) == 0.0
    assert_fp32_equivalent(cosine_similarity_of_subspaces(V, V), 1.0, 64, "self similarity")
    other = torch.linalg.qr(torch.randn(64, 8, generator=g) - V @ (V.T @ torch.randn(64, 8, generator=g)))[0]
    other = project_out(other, V)
    assert cosine_similarity_of_subspaces(V, torch.linalg.qr(other)[0]) < fp32_tolerance(torch.ones(()), 64)


# ---------------------------------------------------------------------------------------------- on a tiny model
def tiny_data(domains=("chat", "math"), examples: int = 24) -> CurriculumDataModule:
    data = CurriculumDataModule(
        [{"name": d, "path": f"demo:{d}", "max_examples": examples} for d in domains],
        max_seq_len=64,
        batch_size=4,
        val_fraction=0.25,
    )
    data.set_tokenizer(byte_tokenizer())
    data.setup("fit")
    return data


def trained_stack(
    stacks: BrainstacksModel,
    data,
    domain: str,
    steps: int = 4,
    callback: NullSpaceProjection | None = None,
    lr: float = 0.05,
) -> None:
    """A few AdamW steps on the active stack; ``callback`` (weight mode) projects after each step."""
    from brainstacks_pl.losses import causal_lm_loss

    data.set_domain(domain)
    params = [p for p in stacks.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    stacks.train()
    batches = iter(data.train_dataloader())
    for _ in range(steps):
        batch = next(batches)
        out = stacks(batch["input_ids"], batch["attention_mask"])
        causal_lm_loss(out.logits, batch["labels"]).backward()
        optimizer.step()
        optimizer.zero_grad()
        if callback is not None:
            callback.project_active(SimpleNamespace(stacks=stacks))
    stacks.eval()


@pytest.fixture(scope="module")
def chat_stack():
    """The tensors of a trained, frozen chat stack and the data module."""
    data = tiny_data()
    stacks = BrainstacksModel(make_tiny_llama(), FP32, ["chat", "math"])
    stacks.add_stack("chat", seed=1)
    trained_stack(stacks, data, "chat")
    return stacks.freeze_stack(), data


def with_chat_frozen(tensors) -> BrainstacksModel:
    stacks = BrainstacksModel(make_tiny_llama(), FP32, ["chat", "math"])
    stacks.load_frozen_stack(tensors, "chat")
    return stacks


def test_batched_collection_equals_one_text_at_a_time(chat_stack):
    tensors, data = chat_stack
    stacks = with_chat_frozen(tensors)
    batched = collect_frozen_deltas(stacks, data.text_dataloader("chat", batch_size=4), max_samples=7)
    single = collect_frozen_deltas(stacks, data.text_dataloader("chat", batch_size=1), max_samples=7)
    assert set(batched) == set(stacks.layers)
    for name in batched:
        assert batched[name].shape == (7, stacks.layers[name].d_out)
        assert batched[name].abs().max() > 0
        assert_fp32_equivalent(batched[name], single[name], TINY_MODEL_DEPTH, name)


@pytest.mark.parametrize("mode", ["weight", "delta"])
def test_trained_stack_is_orthogonal_and_delta_fold_keeps_the_loss(chat_stack, mode):
    tensors, data = chat_stack
    stacks = with_chat_frozen(tensors)
    callback = NullSpaceProjection(mode=mode, k=8)
    bases, report = callback.compute(stacks, data, ["chat"], "cpu")
    assert all(0 < V.shape[1] <= 8 for V in bases.values())
    stacks.set_null_space(bases, mode)
    loader = data.val_dataloader_for("chat")
    chat_before = evaluate_loss(stacks, loader)
    stacks.add_stack("math", seed=2)
    trained_stack(stacks, data, "math", callback=callback)
    math_loader = data.val_dataloader_for("math")
    active_loss = evaluate_loss(stacks, math_loader)
    trained = callback.stack_leaks(SimpleNamespace(stacks=stacks), fold=False)
    stacks.freeze_stack()
    frozen_loss = evaluate_loss(stacks, math_loader)
    for name, layer in stacks.layers.items():
        assert leak(layer.frozen_Bt[-1].T, bases[name]) < LEAK_TOL, name
    if mode == "weight":
        assert max(trained.values()) < LEAK_TOL
    else:  # the forward-only projection leaves a real leak in B; the fold removes it without changing the function
        assert max(trained.values()) > 1e-3
    assert_fp32_equivalent(frozen_loss, active_loss, TINY_MODEL_DEPTH, "loss after the fold")
    with stacks.isolated(["chat"]):
        assert evaluate_loss(stacks, loader) == chat_before  # the earlier domain as it froze, bit for bit


# ---------------------------------------------------------------------------------------------- through the CLI
def fit_args(model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return tiny_sft_args(
        model_dir,
        run_dir,
        DOMAINS,
        {
            "model.stack.frozen_dtype": "float32",
            "data.max_seq_len": 64,
            "data.max_val_examples": 6,
            "boosting.max_rounds": 1,
            "null_space.k": 8,
        },
        *extra,
    )


class KillAtStep(Callback):
    def __init__(self, domain: str, step: int):
        self.domain, self.step = domain, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.stacks.active_info.domain == self.domain and trainer.global_step == self.step:
            raise RuntimeError("simulated kill")


def check_run(run_dir: Path) -> None:
    manifest = Manifest.load(run_dir)
    assert list(manifest.null_space) == ["math"], "the first domain has nothing to protect"
    record = manifest.null_space["math"]
    assert record["file"] == "null_space/math.safetensors"
    bases, metadata = load_tensors(run_dir / record["file"], expected_sha256=record["sha256"])
    assert metadata["k"] == "8"
    stack, _ = load_tensors(run_dir / manifest.stacks[-1].file)
    for name, V in bases.items():
        assert 0 < V.shape[1] <= 8
        assert leak(stack[f"{name}.B"], V) < LEAK_TOL, name
    report = json.loads((run_dir / "null_space" / "math.json").read_text())
    assert report["rows"]["chat"] > 0 and report["leak"]["r0"]["max"] < LEAK_TOL
    forgetting = json.loads((run_dir / "forgetting_matrix.json").read_text())
    for row in forgetting["rows"]:
        for domain, loss in row["as_frozen"].items():
            assert loss == forgetting["at_freeze"][domain]


@pytest.mark.parametrize("mode", ["weight", "delta"])
def test_curriculum_writes_and_resumes_the_null_space(tiny_model_dir, tmp_path, mode, monkeypatch):
    run_dir = tmp_path / mode
    kill = "--trainer.callbacks=[{class_path: test_nullspace.KillAtStep, init_args: {domain: math, step: 2}}]"
    with pytest.raises(RuntimeError, match="simulated kill"):
        cli_main(fit_args(tiny_model_dir, run_dir, "--null_space.mode", mode, kill))
    saved = (run_dir / "null_space" / "math.safetensors").read_bytes()

    def no_recompute(*args, **kwargs):
        raise AssertionError("the saved null space must be re-read, not recomputed")

    monkeypatch.setattr("brainstacks_pl.callbacks.nullspace.collect_frozen_deltas", no_recompute)
    cli_main(fit_args(tiny_model_dir, run_dir, "--null_space.mode", mode))
    assert (run_dir / "null_space" / "math.safetensors").read_bytes() == saved
    assert Manifest.load(run_dir).completed_domains == ["chat", "math"]
    check_run(run_dir)


def test_mode_off_writes_no_basis(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "off"
    cli_main(fit_args(tiny_model_dir, run_dir, "--null_space.mode", "off", "--trainer.max_epochs", "1"))
    assert Manifest.load(run_dir).null_space == {} and not (run_dir / "null_space").exists()
