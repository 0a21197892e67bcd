"""DPO: the pure loss, the stack-off reference, bad preference rows, and the phase end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_llama
from fault_helpers import TINY_FIT, assert_sft_then_phase, make_sft_run, phase_args
from lightning.pytorch.callbacks import Callback
from progress_helpers import ProgressBarRecorder

from brainstacks_pl.cli import cli_main
from brainstacks_pl.config import StackConfig
from brainstacks_pl.data.decontaminate import split_train_val
from brainstacks_pl.data.formats import Example
from brainstacks_pl.data.preferences import PreferenceDataModule, load_rows, preference_pairs
from brainstacks_pl.data.sources import DEMO_DIR
from brainstacks_pl.losses import dpo_loss
from brainstacks_pl.model import BrainstacksModel
from brainstacks_pl.modules.dpo import DPOModule
from brainstacks_pl.storage import Manifest, load_tensors
from brainstacks_pl.tokenization import byte_tokenizer

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- the loss
def test_dpo_loss_against_hand_computed_values():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-1.0, -2.0, -1.5, -1.5))
    loss, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # h = (-1 + 1.5) - (-2 + 1.5) = 1, beta h = 0.5, -log sigmoid(0.5) = log(1 + e^-0.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.5)), abs=1e-6)
    assert chosen.item() == pytest.approx(0.25) and rejected.item() == pytest.approx(-0.25)
    smoothed, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(
        0.9 * math.log1p(math.exp(-0.5)) + 0.1 * math.log1p(math.exp(0.5)), abs=1e-6
    )


@pytest.mark.parametrize("beta,ls", [(0.1, 0.0), (0.5, 0.2), (2.0, 0.05)])
def test_dpo_loss_matches_trl_sigmoid_formula(beta, ls):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(16, generator=g) * 5 - 20 for _ in range(4))
    logits = (pc - rc) - (pr - rr)
    trl = (-F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls).mean()
    loss, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta, ls)
    torch.testing.assert_close(loss, trl)
    torch.testing.assert_close(chosen - rejected, beta * logits)


def test_dpo_loss_at_equal_policy_and_reference_is_log2():
    x = torch.randn(8)
    loss, _, _ = dpo_loss(x, x - 1, x, x - 1, beta=0.3)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


# ---------------------------------------------------------------------- the reference policy
def _randomise_active(stacks: BrainstacksModel) -> None:
    with torch.no_grad():
        for stack in stacks.active_stacks().values():
            stack.B.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))


def test_reference_is_exactly_the_model_with_the_active_stack_off():
    stacks = BrainstacksModel(make_tiny_llama(), StackConfig(rank=4), ["chat", "math"]).eval()
    stacks.add_stack("chat", 0, seed=1)
    _randomise_active(stacks)
    stacks.freeze_stack()  # an earlier stack of the same domain stays on in the reference
    ids = torch.randint(4, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    frozen_only = stacks(ids).logits
    stacks.add_stack("chat", 1, seed=2)
    _randomise_active(stacks)
    policy = stacks(ids).logits
    assert not torch.equal(policy, frozen_only)
    with stacks.active_off():
        torch.testing.assert_close(stacks(ids).logits, frozen_only, rtol=0, atol=0)
    torch.testing.assert_close(stacks(ids).logits, policy, rtol=0, atol=0)  # switched back on


def test_dpo_step_allocates_no_second_model(tmp_path):
    module = DPOModule("chat")
    module.stacks = BrainstacksModel(make_tiny_llama(), StackConfig(rank=4), ["chat"])
    module.stack_config = module.stacks.stack_config
    module.stacks.add_stack("chat", 0)

    def count_modules():
        return sum(1 for _ in module.modules())

    params = {id(p) for p in module.parameters()}
    before = count_modules()
    tok = byte_tokenizer()
    ids = torch.tensor([tok("### Prompt:\nhi\n### Response:\nhello")["input_ids"]] * 2)
    labels = ids.clone()
    labels[:, :10] = -100
    out = module._forward_pairs({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    out["dpo_loss"].backward()
    assert count_modules() == before and {id(p) for p in module.parameters()} == params
    assert sum(isinstance(m, type(module.stacks.model)) for m in module.modules()) == 1
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    assert out["dpo_loss"].item() == pytest.approx(math.log(2), abs=1e-6), "B = 0: policy == reference at step 0"


def test_phases_declare_their_forced_callbacks():
    from brainstacks_pl.modules.sft import StackSFTModule
    from brainstacks_pl.phase import FORCED_CALLBACKS, phase_callbacks

    assert phase_callbacks(DPOModule("chat")) == ("best_stack",)
    assert phase_callbacks(StackSFTModule.__new__(StackSFTModule)) == FORCED_CALLBACKS, "undeclared: all of them"
    odd = DPOModule("chat")
    odd.phase_callbacks = ("best_stack", "early_stopping")
    with pytest.raises(ValueError, match="early_stopping"):
        phase_callbacks(odd)


# ---------------------------------------------------------------------- bad input
def test_empty_and_identical_pairs_are_dropped_and_counted(tmp_path):
    rows = [
        {"prompt": "a", "chosen": "good", "rejected": "bad"},
        {"prompt": "b", "chosen": "", "rejected": "bad"},
        {"prompt": "c", "chosen": "same", "rejected": "same"},
        {
            "prompt": "d",
            "chosen": [{"role": "assistant", "content": "<|im_start|>assistant yes<|im_end|>"}],
            "rejected": [{"role": "assistant", "content": "no"}],
        },
    ]
    pairs, counts = preference_pairs(rows)
    assert [p.prompt for p in pairs] == ["a", "d"] and pairs[1].chosen == "yes"
    assert counts == {"rows": 4, "empty": 1, "identical": 1, "kept": 2}
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[1:3]))
    data = PreferenceDataModule(path=str(path))
    data.set_tokenizer(byte_tokenizer())
    with pytest.raises(ValueError, match="no usable preference pairs"):
        data.setup()
    with pytest.raises(ValueError, match="missing"):
        preference_pairs([{"prompt": "a", "answer": "b"}])


def test_preference_files_are_read_by_the_curriculum_loader(tmp_path):
    """``load_rows`` goes through ``sources.open_dataset``: its UTF-8 check names the file and byte."""
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(ValueError, match=r"alignment data: file .*latin1\.jsonl is not valid UTF-8 \(byte 15"):
        load_rows(str(bad))
    with pytest.raises(FileNotFoundError, match=r"no bundled demo data 'demo:nope'"):
        load_rows("demo:nope")
    for name in ("chat_preferences", "math_rl", "code_rl"):
        lines = (DEMO_DIR / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        assert load_rows(f"demo:{name}") == [json.loads(line) for line in lines if line.strip()]
    assert len(load_rows("demo:chat_preferences", max_examples=5)) == 5


def test_preference_pairs_are_split_like_the_curriculum(tmp_path):
    """One hash split for every phase's data: the same prompts land on the same side."""
    path = tmp_path / "pairs.jsonl"
    for n in (3, 60):  # 3: the tiny-set rule (smallest hash to validation) applies
        rows = [{"prompt": f"question {i}", "chosen": "good", "rejected": "bad"} for i in range(n)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        data = PreferenceDataModule(path=str(path), val_fraction=0.2, max_val_examples=None, seed=3)
        data.set_tokenizer(byte_tokenizer())
        train, val = split_train_val([Example(r["prompt"], "good", "chat") for r in rows], 0.2, 3)
        assert [p.prompt for p in data.pairs("val")] == [e.prompt for e in val] and val
        assert [p.prompt for p in data.pairs("train")] == [e.prompt for e in train]


# ---------------------------------------------------------------------- the phase end to end
def dpo_args(run_dir: Path, *extra: str) -> list[str]:
    return phase_args(
        "dpo_demo.yaml",
        run_dir,
        {
            **TINY_FIT,
            "data.max_examples": 48,
            "data.batch_size": 4,
            "data.max_val_examples": 6,
            "data.max_prompt_len": 48,
            "data.max_seq_len": 96,
        },
        *extra,
    )


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    return make_sft_run(tmp_path_factory.mktemp("dpo"))


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def stack_bytes(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "stacks").glob("*.safetensors"))}


def test_dpo_phase_end_to_end_writes_a_dpo_stack(sft_run, tmp_path):
    run_dir = _copy(sft_run, tmp_path / "run")
    sft_files = stack_bytes(run_dir)
    cli = cli_main(dpo_args(run_dir, "--trainer.callbacks=[{class_path: progress_helpers.ProgressBarRecorder}]"))
    manifest = assert_sft_then_phase(run_dir, "chat", "dpo")
    # Like with like on the bar: train_loss is the DPO loss, as val_loss is; the optimised sum
    # (+ aux_coeff x load balance, logged as train/aux_loss) is train_total_loss, off the bar.
    [recorder] = [cb for cb in cli.trainer.callbacks if isinstance(cb, ProgressBarRecorder)]
    aux_coeff = cli.model.stack_config.aux_coeff
    assert recorder.train and recorder.val
    for bar, logged in recorder.train:
        assert "train_loss" in bar and {key for key in bar if "loss" in key} <= {"train_loss", "val_loss"}, bar
        assert bar["train_loss"] == pytest.approx(logged["train/dpo_loss"])
        total = bar["train_loss"] + aux_coeff * logged["train/aux_loss"]
        assert logged["train_total_loss"] == pytest.approx(total, rel=1e-6, abs=1e-7)
    assert all({key for key in bar if "loss" in key} == {"train_loss", "val_loss"} for bar in recorder.val)
    record = manifest.stacks[-1]
    assert (run_dir / record.file).is_file() and record.val_losses and math.isfinite(record.loss_at_freeze)
    summary = manifest.extra["alignment"][0]
    assert summary["phase"] == "dpo" and summary["domain"] == "chat"
    assert summary["before"]["val_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert set(summary["after"]) >= {"val_loss", "reward_accuracy", "likelihood_accuracy", "margin"}
    assert {k: v for k, v in stack_bytes(run_dir).items() if k in sft_files} == sft_files, "frozen stacks untouched"
    assert not list((run_dir / "rounds").glob("*/checkpoints/*.ckpt"))
    before = stack_bytes(run_dir)
    cli_main(dpo_args(run_dir))  # rerun: the phase is done, nothing changes
    assert stack_bytes(run_dir) == before and len(Manifest.load(run_dir).stacks) == 3
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (run_dir / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    for tag in (
        "train/rewards/chosen",
        "train/rewards/rejected",
        "train/rewards/margins",
        "train/rewards/accuracy",
        "train/aux_loss",
        "train_loss",
        "train_total_loss",
        "val_loss",
        "dpo/after/likelihood_accuracy",
    ):
        assert any(t.startswith(tag) for t in tags), f"{tag} missing from {sorted(tags)}"


class PlantSpike(Callback):
    """Test helper: ruins the active stack right before the validation of ``epoch`` (and records
    which callbacks the phase's trainer carries)."""

    def __init__(self, epoch: int = 1):
        self.epoch = epoch

    def on_fit_start(self, trainer, pl_module):
        self.callback_types = {type(cb).__name__ for cb in trainer.callbacks}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == trainer.num_training_batches - 1:
            with torch.no_grad():
                for stack in pl_module.stacks.active_stacks().values():
                    stack.B.fill_(float("nan"))  # a diverged update


def test_planted_spike_is_caught_and_best_weights_are_written(sft_run, tmp_path):
    run_dir = _copy(sft_run, tmp_path / "run")
    cli = cli_main(
        dpo_args(run_dir, "--trainer.max_epochs", "3", "--trainer.callbacks=[{class_path: test_dpo.PlantSpike}]")
    )
    [spike] = [cb for cb in cli.trainer.callbacks if isinstance(cb, PlantSpike)]
    assert "BestStackCallback" in spike.callback_types, "the phase declares the callbacks it uses"
    assert not {"ResidualBoosting", "NullSpaceProjection"} & spike.callback_types
    record = Manifest.load(run_dir).stacks[-1]
    assert record.phase == "dpo" and len(record.val_losses) == 2, "the spike ended the round"
    assert not math.isfinite(record.val_losses[1]) or record.val_losses[1] > record.val_losses[0] + 0.5
    assert record.loss_at_freeze == pytest.approx(record.best_val_loss, abs=1e-5), (
        "the best snapshot was restored before freezing"
    )


def test_a_phase_never_better_than_before_training_writes_the_no_op_stack(sft_run, tmp_path):
    """The SFT policy (new stack at B = 0) is BestStackCallback's first candidate: when the first
    validation already spiked, that is what is restored and written, not the ruined stack."""
    run_dir = _copy(sft_run, tmp_path / "run")
    cli_main(dpo_args(run_dir, "--trainer.callbacks=[{class_path: test_dpo.PlantSpike, init_args: {epoch: 0}}]"))
    record = Manifest.load(run_dir).stacks[-1]
    assert record.phase == "dpo" and len(record.val_losses) == 1 and not math.isfinite(record.val_losses[0])
    assert record.loss_at_freeze == pytest.approx(math.log(2), abs=1e-6) == record.start_val_loss
    tensors, _ = load_tensors(run_dir / record.file, expected_sha256=record.sha256)
    outputs = [t for k, t in tensors.items() if k.endswith(".B")]
    assert outputs and not any(t.float().any() for t in outputs), "B = 0: the SFT model unchanged"


def test_dpo_on_an_unknown_domain_or_missing_run_is_a_clear_error(sft_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="SFT phase"):
        cli_main(dpo_args(tmp_path / "empty"))
    run_dir = _copy(sft_run, tmp_path / "run")
    with pytest.raises(ValueError, match="not in this run"):
        cli_main(dpo_args(run_dir, "--model.domain", "poetry"))
