"""The SFT curriculum end to end through ``cli_main`` with the real Trainer on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_llama
from fault_helpers import tiny_sft_args
from lightning.pytorch.callbacks import Callback
from progress_helpers import ProgressBarRecorder

from brainstacks_pl.callbacks.best_stack import BestStackCallback
from brainstacks_pl.callbacks.boosting import ResidualBoosting
from brainstacks_pl.cli import cli_main
from brainstacks_pl.config import StackConfig
from brainstacks_pl.model import BrainstacksModel
from brainstacks_pl.modules.sft import StackSFTModule
from brainstacks_pl.storage import Manifest, StackRecord

REPO = Path(__file__).resolve().parents[1]
DOMAINS = '[{name: chat, path: "demo:chat", max_examples: 48}, {name: math, path: "demo:math", max_examples: 48}]'


def fit_args(model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return tiny_sft_args(
        model_dir, run_dir, DOMAINS, {"boosting.max_rounds": 2, "boosting.min_loss_delta": -1.0}, *extra
    )  # always boost to max_rounds: 2 x 2


def stack_bytes(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "stacks").glob("*.safetensors"))}


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "full"
    cli_main(fit_args(tiny_model_dir, run_dir))
    return run_dir


def test_two_domains_two_rounds_write_the_run_directory(finished_run):
    manifest = Manifest.load(finished_run)
    assert [(s.domain, s.round) for s in manifest.stacks] == [("chat", 0), ("chat", 1), ("math", 0), ("math", 1)]
    assert manifest.completed_domains == ["chat", "math"]
    for record in manifest.stacks:
        assert (finished_run / record.file).is_file()
        assert record.loss_at_freeze is not None and math.isfinite(record.loss_at_freeze)
        assert record.val_losses, "BestStackCallback history is recorded"
    assert (finished_run / "forgetting_matrix.json").is_file()
    assert list((finished_run / "tensorboard").rglob("events.out.tfevents.*"))
    assert not list((finished_run / "rounds").glob("*/checkpoints/*.ckpt")), (
        "round checkpoints are removed once the stack is saved"
    )


def test_as_frozen_losses_are_bit_identical_to_the_loss_at_freeze(finished_run):
    data = json.loads((finished_run / "forgetting_matrix.json").read_text())
    assert data["domains"] == ["chat", "math"]
    for row in data["rows"]:
        for domain, loss in row["as_frozen"].items():
            assert loss == data["at_freeze"][domain]
    # after math, chat's ungated loss includes math's stacks; its isolated loss equals as-frozen (chat is first)
    last = data["rows"][-1]
    assert last["isolated"]["chat"] == data["at_freeze"]["chat"]


def test_tensorboard_has_per_stack_curves(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (finished_run / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"]) | set(acc.Tags()["images"])
    for expected in (
        "train/loss/chat/stack0",
        "train/loss/math/stack1",
        "val/loss/chat/stack1",
        "train/aux_loss/chat/stack0",
        "forgetting/ungated/chat",
        "forgetting/matrix",
    ):
        assert any(tag.startswith(expected) for tag in tags), f"{expected} missing from {sorted(tags)}"
    # Every fit (round) logs into its own run, so its step axis and its val_loss are its own;
    # the phase-level figures (forgetting matrix) are in the phase's run.
    tensorboard = finished_run / "tensorboard"
    runs = {p.parent.relative_to(tensorboard).as_posix() for p in tensorboard.rglob("events.out.tfevents.*")}
    assert {"sft", "sft/chat-r0", "sft/chat-r1", "sft/math-r0", "sft/math-r1"} <= runs, runs
    phase = EventAccumulator(str(tensorboard / "sft"))
    phase.Reload()
    assert "forgetting/matrix" in phase.Tags()["images"]


class SimulatedKill(RuntimeError):
    pass


class KillAtStep(Callback):
    """Test helper: dies in the middle of a given domain/round, like a SIGKILL would."""

    def __init__(self, domain: str, round: int, step: int):
        self.domain, self.round, self.step = domain, round, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        info = pl_module.stacks.active_info
        if (info.domain, info.round) == (self.domain, self.round) and trainer.global_step == self.step:
            raise SimulatedKill(f"killed at {self.domain} round {self.round} step {self.step}")


def test_resume_after_a_kill_gives_bit_identical_stacks(tiny_model_dir, finished_run, tmp_path):
    run_dir = tmp_path / "killed"
    kill = (
        "--trainer.callbacks=[{class_path: test_sft_curriculum.KillAtStep, "
        "init_args: {domain: math, round: 0, step: 3}}]"
    )
    with pytest.raises(SimulatedKill):
        cli_main(fit_args(tiny_model_dir, run_dir, kill))
    assert (run_dir / "rounds" / "math-r0" / "checkpoints" / "last.ckpt").is_file(), (
        "the interrupted round left its epoch checkpoint"
    )
    assert len(Manifest.load(run_dir).stacks) == 2
    cli_main(fit_args(tiny_model_dir, run_dir))
    assert stack_bytes(run_dir) == stack_bytes(finished_run)
    assert json.loads((run_dir / "forgetting_matrix.json").read_text()) == json.loads(
        (finished_run / "forgetting_matrix.json").read_text()
    )


def test_a_strategy_object_from_the_config_serves_every_round(tiny_model_dir, finished_run, tmp_path):
    # configs/fsdp_demo.yaml passes its strategy as a class_path: each round's Trainer must get
    # its own copy (a strategy is bound to the first Trainer that uses it).
    run_dir = tmp_path / "object_strategy"
    strategy = (
        "--trainer.strategy={class_path: lightning.pytorch.strategies.SingleDeviceStrategy, init_args: {device: cpu}}"
    )
    cli_main(fit_args(tiny_model_dir, run_dir, strategy))
    assert stack_bytes(run_dir) == stack_bytes(finished_run)


def test_finished_run_is_reused_not_retrained(tiny_model_dir, finished_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    before = stack_bytes(copy)
    cli_main(fit_args(tiny_model_dir, copy))
    assert stack_bytes(copy) == before


def test_corrupt_stack_file_is_named_and_nothing_is_overwritten(tiny_model_dir, finished_run, tmp_path):
    import shutil

    from brainstacks_pl.storage import StackFileError

    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    victim = copy / "stacks" / "chat-r1.safetensors"
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF
    victim.write_bytes(bytes(data))
    others = {k: v for k, v in stack_bytes(copy).items() if k != "chat-r1.safetensors"}
    with pytest.raises(StackFileError, match="chat-r1.safetensors"):
        cli_main(fit_args(tiny_model_dir, copy))
    assert {k: v for k, v in stack_bytes(copy).items() if k != "chat-r1.safetensors"} == others


# ---------------------------------------------------------------------- callbacks in isolation
class FakeTrainer:
    def __init__(self):
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.sanity_checking = False
        self.should_stop = False


class FakeModule:
    def __init__(self):
        self.stacks = BrainstacksModel(make_tiny_llama(), StackConfig(), ["a"])
        self.stacks.add_stack("a")

    def set_b(self, value: float) -> None:
        with torch.no_grad():
            for stack in self.stacks.active_stacks().values():
                stack.B.fill_(value)


def validate(callback: BestStackCallback, trainer: FakeTrainer, module: FakeModule, loss: float) -> None:
    trainer.callback_metrics["val_loss"] = torch.tensor(loss)
    callback.on_validation_end(trainer, module)


def first_b(module: FakeModule) -> float:
    return float(next(iter(module.stacks.active_stacks().values())).B[0, 0])


def test_best_stack_restores_best_weights_on_a_spike():
    callback, trainer, module = BestStackCallback(spike_threshold=0.5, patience=5), FakeTrainer(), FakeModule()
    module.set_b(1.0)
    validate(callback, trainer, module, 2.0)
    module.set_b(2.0)
    validate(callback, trainer, module, 1.5)  # new best: snapshot B = 2
    module.set_b(3.0)
    validate(callback, trainer, module, 2.1)  # 0.6 above best: spike
    assert trainer.should_stop and "spike" in callback.stopped_reason
    assert first_b(module) == 2.0


def test_best_stack_stops_after_patience_and_restores_on_train_end():
    callback, trainer, module = BestStackCallback(spike_threshold=10.0, patience=2), FakeTrainer(), FakeModule()
    module.set_b(1.0)
    validate(callback, trainer, module, 1.0)
    module.set_b(5.0)
    validate(callback, trainer, module, 1.2)
    assert not trainer.should_stop
    validate(callback, trainer, module, 1.1)
    assert trainer.should_stop and "patience" in callback.stopped_reason
    callback.on_train_end(trainer, module)
    assert first_b(module) == 1.0


def test_best_stack_treats_a_non_finite_loss_as_a_spike():
    callback, trainer, module = BestStackCallback(), FakeTrainer(), FakeModule()
    module.set_b(1.0)
    validate(callback, trainer, module, 1.0)
    module.set_b(float("nan"))
    validate(callback, trainer, module, float("nan"))
    assert trainer.should_stop and first_b(module) == 1.0


def test_best_stack_record_fields_are_the_round_s_validations():
    callback, trainer, module = BestStackCallback(), FakeTrainer(), FakeModule()
    assert callback.record_fields() == {"best_val_loss": None, "val_losses": []}, "no validation: no best"
    validate(callback, trainer, module, 2.0)
    validate(callback, trainer, module, 1.5)
    assert callback.record_fields() == {"best_val_loss": 1.5, "val_losses": [2.0, 1.5]}


def record(round: int, start: float, end: float) -> StackRecord:
    return StackRecord(file="", sha256="", domain="d", round=round, start_val_loss=start, loss_at_freeze=end)


def test_boosting_stops_on_a_plateau_and_at_max_rounds():
    boosting = ResidualBoosting(max_rounds=3, min_loss_delta=0.002)
    assert boosting.wants_another_round([])
    assert boosting.wants_another_round([record(0, 2.0, 1.5)])
    assert not boosting.wants_another_round([record(0, 2.0, 1.5), record(1, 1.5, 1.499)]), "improved by 0.001 < 0.002"
    assert not boosting.wants_another_round([record(0, 2.0, 1.5), record(1, 1.5, 1.2), record(2, 1.2, 0.9)]), (
        "max_rounds"
    )


# ---------------------------------------------------------------------- configs and bad input
@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    assert "model_name_or_path" in capsys.readouterr().out


def test_unknown_config_key_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(REPO / "configs" / "demo.yaml"), "--model.stack.rnak", "8"])
    assert "rnak" in capsys.readouterr().err


def test_wrong_type_is_named(capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(REPO / "configs" / "demo.yaml"), "--boosting.max_rounds", "many"])
    assert "max_rounds" in capsys.readouterr().err


def test_missing_domain_files_name_the_domain(tiny_model_dir, tmp_path):
    missing = (
        '--data.domains=[{name: chat, path: "demo:chat", max_examples: 16}, '
        '{name: law, path: "/nonexistent/law.jsonl"}]'
    )
    with pytest.raises(Exception, match="law"):
        cli_main(fit_args(tiny_model_dir, tmp_path / "run", missing))


def test_the_bar_shows_the_task_loss_beside_val_loss_and_logs_the_total_apart(tiny_model_dir):
    """Like with like on the progress bar: ``train_loss`` is the task loss, the quantity of
    ``val_loss``; the load-balance term (here aux_coeff = 1, so it shows) is logged on its own,
    and the optimised sum as ``train_total_loss``, off the bar."""
    import lightning as L

    from brainstacks_pl.data import CurriculumDataModule, DomainConfig

    data = CurriculumDataModule(
        [DomainConfig("chat", "demo:chat", max_examples=24)],
        tokenizer=str(tiny_model_dir),
        max_seq_len=64,
        batch_size=4,
        max_val_examples=4,
    )
    stack = StackConfig(experts=2, rank=4, top_k=1, aux_coeff=1.0)
    module = StackSFTModule(str(tiny_model_dir), stack=stack, domains=["chat"], log_expert_utilisation_every=0)
    module.build().add_stack("chat")
    recorder = ProgressBarRecorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[recorder],
    )
    trainer.fit(module, datamodule=data)
    assert len(recorder.train) == 2 and len(recorder.val) == 1
    for bar, logged in recorder.train:
        assert {key for key in bar if "loss" in key} == {"train_loss"}, bar
        assert bar["train_loss"] == pytest.approx(logged["train/loss/chat/stack0"])  # the task loss
        aux = logged["train/aux_loss/chat/stack0"]
        assert aux > 0.01 and logged["train_total_loss"] == pytest.approx(bar["train_loss"] + aux)
    assert {key for key in recorder.val[0] if "loss" in key} == {"train_loss", "val_loss"}


def test_a_non_finite_loss_never_reaches_the_weights(tiny_model_dir, monkeypatch, caplog):
    import lightning as L

    import brainstacks_pl.modules.sft as sft
    from brainstacks_pl.data import CurriculumDataModule, DomainConfig

    data = CurriculumDataModule(
        [DomainConfig("chat", "demo:chat", max_examples=24)],
        tokenizer=str(tiny_model_dir),
        max_seq_len=64,
        batch_size=4,
        max_val_examples=4,
    )
    module = StackSFTModule(str(tiny_model_dir), domains=["chat"], log_expert_utilisation_every=0)
    module.build().add_stack("chat")
    before = module.stacks.active_state_dict()
    monkeypatch.setattr(sft, "causal_lm_loss", lambda logits, labels: torch.tensor(float("nan")))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    after = module.stacks.active_state_dict()
    assert module.nonfinite_steps == 2
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "non-finite training loss" in caplog.text
