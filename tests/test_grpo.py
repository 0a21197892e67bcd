"""GRPO: advantages, the clipped surrogate, a planted update, reward errors, and the phase end to end."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_llama
from fault_helpers import TINY_FIT, assert_sft_then_phase, make_sft_run, phase_args
from progress_helpers import ProgressBarRecorder

from brainstacks_pl.cli import cli_main
from brainstacks_pl.config import StackConfig
from brainstacks_pl.data.rl_prompts import PromptDataModule
from brainstacks_pl.generation import generate
from brainstacks_pl.losses import group_advantages, grpo_loss
from brainstacks_pl.model import BrainstacksModel
from brainstacks_pl.modules.grpo import GRPOModule, RewardError, RewardSpec
from brainstacks_pl.storage import Manifest, load_tensors
from brainstacks_pl.tokenization import byte_tokenizer

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- pure functions
def test_group_advantages_are_zero_mean_within_each_group():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.2, 0.9, 0.4, 0.4], [3.0, 3.0, 3.0, 3.0]])
    adv = group_advantages(rewards)
    torch.testing.assert_close(adv.mean(1), torch.zeros(3), atol=1e-6, rtol=0)
    assert torch.equal(adv[2], torch.zeros(4)), "equal rewards carry no signal"
    assert (adv[0] > 0).tolist() == [True, False, False, True]
    torch.testing.assert_close(adv[1].std(), torch.tensor(1.0), atol=1e-3, rtol=0)
    assert torch.equal(group_advantages(torch.tensor([[5.0], [1.0]])), torch.zeros(2, 1))


def test_grpo_loss_at_ratio_one_is_minus_the_mean_advantage_and_clips():
    logps = torch.zeros(2, 3, requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    out = grpo_loss(logps, logps.detach(), None, adv, mask)
    assert out.loss.item() == pytest.approx(0.0) and out.kl.item() == 0.0
    out.loss.backward()
    # d/dlogp of -ratio*A averaged per sequence: -A / n_tokens on real tokens, 0 on padding
    torch.testing.assert_close(logps.grad, torch.tensor([[-0.25, -0.25, 0.0], [1 / 6, 1 / 6, 1 / 6]]))
    high = torch.full((1, 2), 0.5, requires_grad=True)  # ratio e^0.5 > 1.2 with A > 0: clipped, no gradient
    out = grpo_loss(high, torch.zeros(1, 2), None, torch.tensor([1.0]), torch.ones(1, 2))
    out.loss.backward()
    assert torch.equal(high.grad, torch.zeros(1, 2)) and out.clip_fraction.item() == 1.0


def test_grpo_kl_term_is_zero_at_the_reference_and_positive_elsewhere():
    ref = torch.log(torch.tensor([[0.5, 0.25]]))
    same = grpo_loss(ref.clone(), ref, ref, torch.zeros(1), torch.ones(1, 2), kl_coeff=0.1)
    moved = grpo_loss(ref + 0.3, ref + 0.3, ref, torch.zeros(1), torch.ones(1, 2), kl_coeff=0.1)
    assert same.kl.item() == pytest.approx(0.0) and moved.kl.item() > 0 and moved.loss.item() > 0


# ---------------------------------------------------------------------- a planted update
def tiny_module(**kwargs) -> GRPOModule:
    module = GRPOModule("math", **kwargs)
    module.stacks = BrainstacksModel(make_tiny_llama(), StackConfig(rank=4), ["math"])
    module.stack_config = module.stacks.stack_config
    module.tokenizer = byte_tokenizer()
    module.stacks.add_stack("math", 0, seed=0)
    return module


def test_one_update_follows_the_sign_of_the_advantage():
    module = tiny_module()
    tok = module.tokenizer
    prompt = [0] + tok("### Prompt:\n2+2?\n### Response:\n", add_special_tokens=False)["input_ids"]
    good, bad = (tok(text, add_special_tokens=False)["input_ids"] + [1] for text in ("4", "5"))
    sequences = torch.tensor([prompt + good, prompt + bad])  # same length: one token + eos each
    attention = torch.ones_like(sequences)
    mask = torch.ones(2, len(good))
    advantages = group_advantages(torch.tensor([[1.0, 0.0]])).view(-1)
    assert advantages[0] > 0 > advantages[1]
    module.stacks.eval()
    with torch.no_grad():
        old, _ = module.token_logps(sequences, attention, len(prompt))
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.05)
    logps, _ = module.token_logps(sequences, attention, len(prompt))
    grpo_loss(logps, old, None, advantages, mask).loss.backward()
    optimizer.step()
    with torch.no_grad():
        new, _ = module.token_logps(sequences, attention, len(prompt))
    change = (new - old).sum(1)
    assert change[0] > 0 > change[1], f"log-prob changes {change.tolist()}"


def test_sampling_is_seeded_and_stops_at_eos():
    module = tiny_module()
    module.stacks.eval()
    ids = torch.tensor([[2, 2, 0, 40, 41], [0, 42, 43, 44, 45]])  # left-padded
    mask = (ids != 2).long()
    runs = [module.sample(ids, mask, 6, 1.0, torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0])
    seqs, completion_mask = runs[0]
    assert seqs.shape[1] <= 5 + 6 and completion_mask.shape == (2, seqs.shape[1] - 5)
    for row, m in zip(seqs[:, 5:], completion_mask):
        ends = (row == 1).nonzero()
        if len(ends):  # nothing after the first eos counts
            assert m[ends[0, 0] + 1 :].sum() == 0 and m[: ends[0, 0] + 1].all()


def test_cached_and_uncached_sampling_give_identical_tokens():
    """The KV cache is valid with stacks (they act per token inside the Linear layers): same seed,
    same tokens, with a frozen stack and an active one on, left padding and greedy or sampled."""
    module = tiny_module()
    stacks = module.stacks
    with torch.no_grad():
        for stack in stacks.active_stacks().values():
            stack.B.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    stacks.freeze_stack()
    stacks.add_stack("math", 1, seed=2)
    with torch.no_grad():
        for stack in stacks.active_stacks().values():
            stack.B.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    stacks.eval()
    ids = torch.tensor([[2, 2, 0, 40, 41], [0, 42, 43, 44, 45], [2, 2, 2, 0, 50]])
    mask = (ids != 2).long()
    for temperature in (None, 1.0):
        cached, uncached = (
            generate(
                stacks.model,
                ids,
                mask,
                24,
                temperature,
                torch.Generator().manual_seed(3),
                eos_token_id=1,
                pad_token_id=2,
                use_cache=use,
            )
            for use in (True, False)
        )
        assert torch.equal(cached.sequences, uncached.sequences) and torch.equal(
            cached.completion_mask, uncached.completion_mask
        )
    short = generate(stacks.model, ids, mask, 24, None, pad_token_id=2, max_length=7)  # context of 7 tokens
    assert short.completion_mask.sum(1).tolist() == [4, 2, 5], "a row stops when its real length reaches the context"


# ---------------------------------------------------------------------- bad rewards
def raising_reward(prompts, completions, **_):
    raise ZeroDivisionError("planted")


def short_reward(prompts, completions, **_):
    return [1.0]


def nan_reward(prompts, completions, **_):
    return [float("nan") if i % 4 == 0 else float(len(c) % 2) for i, c in enumerate(completions)]


def test_reward_errors_are_named_or_skipped():
    module = tiny_module(rewards=[RewardSpec("test_grpo.raising_reward")])
    with pytest.raises(RewardError, match="test_grpo.raising_reward raised ZeroDivisionError"):
        module.score(["p", "q"], ["a", "b"], {}, "train")
    module.on_reward_error = "skip"
    assert module.score(["p", "q"], ["a", "b"], {}, "train") is None
    module = tiny_module(rewards=[RewardSpec("test_grpo.short_reward")], on_reward_error="skip")
    with pytest.raises(RewardError, match="returned 1 values for 2"):
        module.score(["p", "q"], ["a", "b"], {}, "train")
    scores = tiny_module(rewards=[RewardSpec("test_grpo.nan_reward")]).score(["p"] * 2, ["a", "b"], {}, "train")
    assert math.isnan(scores[0]) and scores[1] == 1.0
    with pytest.raises(ValueError, match="cannot import reward"):
        GRPOModule("math", rewards=[RewardSpec("brainstacks_pl.rewards.no_such_reward")])


# ---------------------------------------------------------------------- prompt data
def test_prompt_csv_cells_reach_the_rewards_as_text(tmp_path):
    """The curriculum loader reads CSV as text: an answer "2" next to an empty cell stays "2"."""
    path = tmp_path / "prompts.csv"
    path.write_text("prompt,answer\nWhat is 1 + 1?,2\nName a colour.,\nWhat is 2 + 2?,4\n", encoding="utf-8")
    data = PromptDataModule(path=str(path), val_fraction=0.0)
    data.set_tokenizer(byte_tokenizer())
    data.setup()
    assert sorted(cols["answer"] for _, cols in data._rows[0]) == ["", "2", "4"]


# ---------------------------------------------------------------------- the phase end to end
@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    return make_sft_run(tmp_path_factory.mktemp("grpo"))


def grpo_args(run_dir: Path, *extra: str) -> list[str]:
    return phase_args(
        "grpo_demo.yaml",
        run_dir,
        {
            **TINY_FIT,
            "model.group_size": 3,
            "model.max_new_tokens": 6,
            "model.val_max_new_tokens": 6,
            "data.max_examples": 40,
            "data.batch_size": 2,
            "data.eval_batch_size": 4,
            "data.max_val_examples": 4,
        },
        *extra,
    )


def test_grpo_phase_end_to_end_writes_a_grpo_stack(sft_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(sft_run, run_dir)
    cli = cli_main(grpo_args(run_dir, "--trainer.callbacks=[{class_path: progress_helpers.ProgressBarRecorder}]"))
    manifest = assert_sft_then_phase(run_dir, "math", "grpo")
    # Like with like on the bar: the mean reward, sampled in training and greedy in validation;
    # GRPO's surrogate loss (train_loss, + aux_coeff x load balance: train_total_loss) stays off it.
    [recorder] = [cb for cb in cli.trainer.callbacks if isinstance(cb, ProgressBarRecorder)]
    aux_coeff = cli.model.stack_config.aux_coeff
    assert recorder.train and recorder.val
    for bar, logged in recorder.train:
        shown = {key for key in bar if "loss" in key or "reward" in key}
        assert "train/reward" in shown and shown <= {"train/reward", "val/reward"}, bar
        assert logged["train_loss"] == pytest.approx(logged["train/grpo_loss"])
        total = logged["train_loss"] + aux_coeff * logged["train/aux_loss"]
        assert logged["train_total_loss"] == pytest.approx(total, rel=1e-6, abs=1e-7)
    for bar in recorder.val:
        assert {key for key in bar if "loss" in key or "reward" in key} == {"train/reward", "val/reward"}, bar
    record = manifest.stacks[-1]
    assert record.steps == 2 * 2 * 2, "manual optimisation: updates_per_batch optimizer steps per batch"
    assert len(record.val_losses) == 2
    summary = manifest.extra["alignment"][0]
    assert {"reward", "math_exact_match", "format_reward", "val_loss"} <= set(summary["before"]) and summary[
        "phase"
    ] == "grpo"
    tensors, _ = load_tensors(run_dir / record.file, expected_sha256=record.sha256)
    assert all(torch.isfinite(t.float()).all() for t in tensors.values())


def test_a_raising_reward_stops_the_phase_and_writes_nothing(sft_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(sft_run, run_dir)
    with pytest.raises(RewardError, match="raising_reward"):
        cli_main(grpo_args(run_dir, "--model.rewards=[{function: test_grpo.raising_reward}]"))
    assert len(Manifest.load(run_dir).stacks) == 2 and not (run_dir / "stacks" / "math-r1.safetensors").exists()


def test_non_finite_rewards_drop_their_groups_and_the_stack_stays_finite(sft_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(sft_run, run_dir)
    # validation uses the same reward, so val_loss is the mean over the finite values
    cli_main(grpo_args(run_dir, "--model.rewards=[{function: test_grpo.nan_reward}]", "--trainer.max_epochs", "1"))
    record = Manifest.load(run_dir).stacks[-1]
    tensors, _ = load_tensors(run_dir / record.file)
    assert record.phase == "grpo" and all(torch.isfinite(t.float()).all() for t in tensors.values())
