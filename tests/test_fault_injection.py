"""Fault injection: SIGKILL the CLI at randomised moments, rerun it, get the same bytes.

The tiny 2-domain x 2-round curriculum runs once uninterrupted (the reference). Then one run
directory goes through a chain of launches: each launch waits for its kill point (a file
appearing in the run directory, written by *this* launch), optionally sleeps a random
moment and SIGKILLs the process group; the next launch resumes from whatever was left on
disk. After the last kill the command is rerun until it exits 0, and the stack files must be
byte-identical to the reference and the forgetting matrix equal.

The kill points (7 of 10 candidates) and delays come from ``random.Random(seed)``; the seed is
fixed by default so CI is reproducible (``BRAINSTACKS_FAULT_SEED`` picks others) and every
assertion message carries it, so a failure
reproduces with ``BRAINSTACKS_FAULT_SEED=<seed> pytest tests/test_fault_injection.py``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_helpers import (
    TESTS,
    fit_args,
    fresh,
    kill_group,
    launch,
    make_model_dir,
    read_manifest,
    run_to_completion,
    stack_bytes,
    subprocess_env,
    tree_digest,
    wait_for,
)

from brainstacks_pl.run import RunDirectory, RunLockedError
from brainstacks_pl.storage import Manifest, StackFileError

ROUNDS = [("chat", 0), ("chat", 1), ("math", 0), ("math", 1)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def reference(model_dir, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    work = tmp_path_factory.mktemp("reference")
    run_to_completion(fit_args(model_dir, work / "run"), work, work / "log.txt")
    return work / "run"


# ---------------------------------------------------------------------- kill points
def _listed(domain: str, round: int):
    """A kill point is behind us once the stack it precedes is in the manifest."""

    def passed(run: Path) -> bool:
        manifest = read_manifest(run) or {"stacks": []}
        return any((s["domain"], s["round"]) == (domain, round) for s in manifest["stacks"])

    return passed


def _round_checkpoint(domain: str, round: int):
    def trigger(run: Path, since: int) -> bool:
        return fresh(run / "rounds" / f"{domain}-r{round}" / "checkpoints" / "last.ckpt", since)

    return f"during {domain} round {round} (after its epoch checkpoint)", trigger, (0.0, 0.25), _listed(domain, round)


def _stack_write(domain: str, round: int):
    name = f"{domain}-r{round}.safetensors"

    def trigger(run: Path, since: int) -> bool:
        stacks = run / "stacks"
        return fresh(stacks / name, since) or any(fresh(p, since) for p in stacks.glob(f".{name}.*.tmp"))

    return (
        f"while stack {name} is written (temp file or right after the rename)",
        trigger,
        (0.0, 0.0),
        _listed(domain, round),
    )


def _null_space_collection():
    def trigger(run: Path, since: int) -> bool:
        manifest = read_manifest(run)
        return (
            fresh(run / "manifest.json", since)
            and manifest is not None
            and "chat" in manifest["completed_domains"]
            and not any(s["domain"] == "math" for s in manifest["stacks"])
        )

    return (
        "during null-space collection (math, the second domain, has started)",
        trigger,
        (0.0, 0.05),
        _listed("math", 0),
    )


def _startup():
    return "at a random moment after launch", (lambda run, since: True), (0.5, 3.0), (lambda run: False)


KILLS_PER_RUN = 7
CANDIDATES = [
    _startup(),
    _round_checkpoint("chat", 0),
    _stack_write("chat", 0),
    _round_checkpoint("chat", 1),
    _stack_write("chat", 1),
    _null_space_collection(),
    _round_checkpoint("math", 0),
    _stack_write("math", 0),
    _round_checkpoint("math", 1),
    _stack_write("math", 1),
]


@pytest.mark.multiprocess
def test_random_sigkills_resume_to_byte_identical_stacks(model_dir, reference, tmp_path):
    # Fixed by default so CI is reproducible; BRAINSTACKS_FAULT_SEED picks other kill points.
    seed = int(os.environ.get("BRAINSTACKS_FAULT_SEED") or 20261128)
    rng = random.Random(seed)
    # the seed picks 7 of the 10 kill points (kept in curriculum order: each launch resumes the
    # last) and the moments; a point that a late kill already carried us past is skipped.
    # Seven, not all ten, keeps the chain near a minute; other seeds cover the other points.
    chosen = sorted(rng.sample(range(len(CANDIDATES)), KILLS_PER_RUN))
    run, args, log = tmp_path / "run", fit_args(model_dir, tmp_path / "run"), tmp_path / "log.txt"
    landed, stale_locks = [], 0
    for index in chosen:
        name, trigger, (lo, hi), passed = CANDIDATES[index]
        if passed(run):
            continue
        since = time.time_ns() - 1_000_000  # coarse mtime clocks: allow 1 ms
        proc = launch(args, tmp_path, log)
        fired = wait_for(proc, lambda trigger=trigger, since=since: trigger(run, since))
        if proc.poll() is not None:
            assert proc.returncode == 0, (
                f"seed {seed}: run failed before '{name}':\n{log.read_text(errors='replace')[-4000:]}"
            )
            break  # the run finished before this kill point: the chain is over
        assert fired
        time.sleep(rng.uniform(lo, hi))
        code = kill_group(proc)
        if code == -signal.SIGKILL:
            manifest = read_manifest(run) or {"stacks": []}
            landed.append(f"{name}: {len(manifest['stacks'])} stacks listed")
            stale_locks += (run / ".lock").is_file()
    assert len(landed) >= 5, f"seed {seed}: only {len(landed)} kills landed: {landed}"
    assert stale_locks, f"seed {seed}: a SIGKILLed run leaves its lock behind (the rerun must take it over)"
    for _ in range(3):  # rerun the same command until it finishes
        if read_manifest(run) and read_manifest(run)["completed_domains"] == ["chat", "math"]:
            break
        run_to_completion(args, tmp_path, log)
    context = f"seed {seed}, kills: {landed}"
    assert stack_bytes(run) == stack_bytes(reference), context
    assert json.loads((run / "forgetting_matrix.json").read_text()) == json.loads(
        (reference / "forgetting_matrix.json").read_text()
    ), context
    manifest, expected = Manifest.load(run), Manifest.load(reference)
    assert [(s.domain, s.round, s.sha256) for s in manifest.stacks] == [
        (s.domain, s.round, s.sha256) for s in expected.stacks
    ], context
    assert [(s.domain, s.round) for s in manifest.stacks] == ROUNDS, context
    assert manifest.null_space == expected.null_space, context
    assert not (run / ".lock").exists(), context
    assert not list(run.rglob("*.tmp")), f"{context}: temp files left behind"
    assert not list((run / "rounds").glob("*/checkpoints/*.ckpt")), context


@pytest.mark.multiprocess
def test_resume_of_a_later_boosting_round_mid_round_is_byte_identical(model_dir, reference, tmp_path):
    run, args, log = tmp_path / "run", fit_args(model_dir, tmp_path / "run"), tmp_path / "log.txt"
    since = time.time_ns() - 1_000_000
    proc = launch(args, tmp_path, log)
    assert wait_for(proc, lambda: fresh(run / "rounds" / "chat-r1" / "checkpoints" / "last.ckpt", since))
    assert kill_group(proc) == -signal.SIGKILL
    run_to_completion(args, tmp_path, log)
    assert stack_bytes(run)["chat-r1.safetensors"] == stack_bytes(reference)["chat-r1.safetensors"]


# ---------------------------------------------------------------------- corruption on disk
def test_corrupt_manifest_is_named_and_nothing_is_written(model_dir, reference, tmp_path):
    """A torn or edited manifest is refused with its path; nothing in the run directory changes.

    (A corrupt *stack* file is covered by test_sft_curriculum.test_corrupt_stack_file_is_named_...)
    """
    import shutil

    from fault_helpers import fit_args as args_for

    from brainstacks_pl.cli import cli_main

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    manifest = run / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:-40])  # cut short, as a non-atomic writer would leave it
    before = tree_digest(run)
    with pytest.raises(StackFileError, match="manifest.json.*not valid JSON"):
        cli_main(args_for(model_dir, run))
    assert tree_digest(run) == before


def test_manifest_checksum_edit_is_caught_at_the_stack_file(reference, tmp_path):
    """A manifest whose recorded sha256 no longer matches its stack file: the file is named."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    raw = json.loads((run / "manifest.json").read_text())
    raw["stacks"][2]["sha256"] = "0" * 64
    (run / "manifest.json").write_text(json.dumps(raw))
    directory = RunDirectory(run, is_writer=False)
    directory.manifest = Manifest.load(run)
    with pytest.raises(StackFileError, match=r"math-r0\.safetensors: sha256 mismatch"):
        directory.verify()


def test_manifest_listing_a_missing_stack_file_is_named(reference, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "stacks" / "chat-r1.safetensors").unlink()
    directory = RunDirectory(run, is_writer=False)
    directory.manifest = Manifest.load(run)
    with pytest.raises(StackFileError, match=r"chat-r1\.safetensors: stack file is missing"):
        directory.verify()


# ---------------------------------------------------------------------- the lock
@pytest.fixture
def lock_holder(tmp_path):
    """A live process holding ``tmp_path/run``'s lock."""
    run, ready = tmp_path / "run", tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "fault_helpers.py"), "hold_lock", str(run), str(ready)], env=subprocess_env()
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "lock holder died"
            time.sleep(0.02)
        yield run, proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_live_holder_keeps_a_second_run_out(lock_holder):
    run, pid = lock_holder
    with pytest.raises(RunLockedError) as err:
        RunDirectory(run).acquire_lock()
    assert str(run) in str(err.value) and str(pid) in str(err.value)


def test_a_finished_rounds_leftover_checkpoint_is_removed_by_the_rerun(model_dir, reference, tmp_path):
    # A kill between listing a stack and removing its round directory leaves a checkpoint behind.
    import shutil

    from brainstacks_pl.cli import cli_main

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    leftover = run / "rounds" / "chat-r1" / "checkpoints" / "last.ckpt"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"stale")
    stacks_before = stack_bytes(run)
    cli_main(fit_args(model_dir, run))
    assert not leftover.parent.parent.exists()
    assert stack_bytes(run) == stacks_before


def test_second_cli_run_on_a_locked_dir_fails_clearly_and_writes_nothing(model_dir, lock_holder):
    from brainstacks_pl.cli import cli_main

    run, pid = lock_holder
    before = tree_digest(run)
    with pytest.raises(RunLockedError, match=str(run)):
        cli_main(fit_args(model_dir, run))
    assert tree_digest(run) == before


def test_a_stale_lock_from_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(str(dead.pid))  # the old format: a bare pid
    directory = RunDirectory(run)
    directory.acquire_lock()
    assert str(os.getpid()) in (run / ".lock").read_text()
    directory.release_lock()
    assert not (run / ".lock").exists()


def test_release_never_removes_another_process_lock(lock_holder):
    run, _ = lock_holder
    before = (run / ".lock").read_text()
    RunDirectory(run).release_lock()  # a process that never got the lock
    assert (run / ".lock").read_text() == before
