"""What phases say: bounded-rate progress lines, end-of-phase tables, reruns naming ignored settings."""

from __future__ import annotations

from types import SimpleNamespace

from brainstacks_pl.phase import changed_settings, flatten_settings, record_settings, settings_note
from brainstacks_pl.progress import Progress
from brainstacks_pl.report import print_phase_summary


def test_progress_lines_are_rate_limited_and_the_last_one_always_shows():
    now, lines = [0.0], []
    progress = Progress("discovery", 100, interval=10.0, emit=lines.append, clock=lambda: now[0])
    for _ in range(99):
        now[0] += 0.5  # 99 updates over 49.5 s: one line per 10 s, not one per update
        progress.update(1, "chat/train")
    assert len(lines) == 4 and lines[0] == "discovery: 20/100 (20%), 10s, ~40s left [chat/train]"
    now[0] += 0.5
    progress.update(1)
    assert lines[-1] == "discovery: 100/100 (100%), 50s" and len(lines) == 5


def test_settings_are_flattened_compared_and_named_on_a_rerun():
    config = {
        "config": ["a.yaml"],
        "trainer": {"max_epochs": 2, "default_root_dir": "runs/x"},
        "model": {"init_args": {"lr": 0.1}},
    }
    flat = flatten_settings(config)
    assert flat == {"trainer.max_epochs": 2, "model.init_args.lr": 0.1}
    manifest = SimpleNamespace(extra={})
    assert "were not recorded" in settings_note(manifest, "sft", flat)
    record_settings(manifest, "sft", flat)
    assert settings_note(manifest, "sft", flat) == "same settings as the finished run"
    changed = {**flat, "trainer.max_epochs": 3}
    assert changed_settings(flat, changed) == ["trainer.max_epochs"]
    assert (
        settings_note(manifest, "sft", changed)
        == "changed settings ignored (the phase is finished): trainer.max_epochs: 2 -> 3"
    )


def test_phase_summary_table_has_before_after_and_artifacts(capsys):
    print_phase_summary(
        "dpo on chat",
        [("val_loss", 0.693, 0.338), ("reward_accuracy", 0.0, None)],
        {"stack": "runs/demo/stacks/chat-r2.safetensors"},
        ["a note"],
    )
    out = capsys.readouterr().out
    assert "dpo on chat" in out and "0.693" in out and "0.338" in out and "-" in out
    assert "stack: runs/demo/stacks/chat-r2.safetensors" in out and "a note" in out
