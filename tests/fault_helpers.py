"""Helpers for tests that run ``python -m brainstacks_pl fit`` in a subprocess and poke at its run directory.

Importable from the subprocesses too (the tests put ``tests/`` on ``PYTHONPATH``), which is
why this lives here and not in ``conftest.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"

# 2 domains x 2 rounds, as small as the pipeline allows (whole run ~10 s on one core).
TINY_DOMAINS = '[{name: chat, path: "demo:chat", max_examples: 32}, {name: math, path: "demo:math", max_examples: 32}]'


def phase_args(config: str, run_dir: Path, settings: dict[str, object], *extra: str) -> list[str]:
    """``fit --config configs/<config>`` on ``run_dir`` with ``--key value`` per setting (bools as
    ``true``/``false``), then ``extra``: every test's CLI call is built here, so a test states only
    the settings it is about."""
    args = ["fit", "--config", str(REPO / "configs" / config), "--trainer.default_root_dir", str(run_dir)]
    for key, value in settings.items():
        args += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return [*args, *extra]


TINY_FIT = {"trainer.max_epochs": 2, "trainer.limit_train_batches": 2, "trainer.enable_progress_bar": False}
"""Two epochs of two batches, no progress bar: the trainer of every tiny phase test."""

TINY_SFT = {
    **TINY_FIT,
    "data.max_seq_len": 96,
    "data.batch_size": 4,
    "data.max_val_examples": 8,
}
"""The tiny SFT curriculum every phase test starts from (tests override what they are about)."""


def tiny_sft_args(
    model_dir, run_dir: Path, domains: str, settings: dict[str, object] | None = None, *extra: str
) -> list[str]:
    """``configs/demo.yaml`` on the tiny model: ``TINY_SFT`` updated with ``settings``."""
    merged = {"model.model_name_or_path": model_dir, **TINY_SFT, "data.domains": domains, **(settings or {})}
    return phase_args("demo.yaml", run_dir, merged, *extra)


def make_model_dir(path: Path) -> Path:
    """The conftest tiny Llama + byte tokenizer, written with ``save_pretrained``."""
    from conftest import save_tiny_model

    return save_tiny_model(path)


def fit_args(model_dir: Path, run_dir: Path, *extra: str, batch_size: int = 4) -> list[str]:
    """CLI arguments (after ``brainstacks``) of the tiny 2-domain x 2-round curriculum."""
    return tiny_sft_args(
        model_dir,
        run_dir,
        TINY_DOMAINS,
        {
            "data.max_seq_len": 64,
            "data.batch_size": batch_size,
            "boosting.max_rounds": 2,
            "boosting.min_loss_delta": -1.0,
            "null_space.mode": "weight",
            "null_space.k": 4,
            "null_space.n_samples": 8,
        },
        *extra,
    )


def make_sft_run(root: Path, *extra: str) -> Path:
    """A one-stack-per-domain (chat, math) SFT run on the tiny model under ``root``: what the
    alignment phases continue."""
    from brainstacks_pl.cli import cli_main

    run_dir = root / "sft"
    settings = {"model.stack.rank": 4, "trainer.max_epochs": 1, "data.max_val_examples": 4, "boosting.max_rounds": 1}
    cli_main(tiny_sft_args(make_model_dir(root / "tiny"), run_dir, TINY_DOMAINS, settings, *extra))
    return run_dir


def assert_sft_then_phase(run_dir: Path, domain: str, phase: str):
    """The manifest lists ``make_sft_run``'s two stacks, then exactly one ``phase`` stack for
    ``domain`` (round 1): returns the manifest."""
    from brainstacks_pl.storage import Manifest

    manifest = Manifest.load(run_dir)
    stacks = [(s.domain, s.round, s.phase) for s in manifest.stacks]
    assert stacks == [("chat", 0, "sft"), ("math", 0, "sft"), (domain, 1, phase)], stacks
    return manifest


def subprocess_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }


def launch(args: list[str], cwd: Path, log_path: Path) -> subprocess.Popen:
    """Start ``python -m brainstacks_pl ARGS`` in its own process group, output to ``log_path``."""
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "brainstacks_pl", *args],
            cwd=cwd,
            env=subprocess_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()  # the child holds its own descriptor


def run_to_completion(args: list[str], cwd: Path, log_path: Path, timeout: float = 300) -> None:
    proc = launch(args, cwd, log_path)
    code = proc.wait(timeout=timeout)
    if code != 0:
        raise AssertionError(f"exit code {code}; log tail:\n{log_path.read_text(errors='replace')[-4000:]}")


def kill_group(proc: subprocess.Popen) -> int:
    """SIGKILL the process group (the CLI and anything it spawned); return the exit code."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.wait(timeout=60)


def wait_for(proc: subprocess.Popen, trigger: Callable[[], bool], timeout: float = 300, poll: float = 0.005) -> bool:
    """Poll ``trigger`` until it holds (True) or the process exits first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if trigger():
            return True
        if proc.poll() is not None:
            return trigger()
        time.sleep(poll)
    raise TimeoutError("trigger never fired")


def fresh(path: Path, since_ns: int) -> bool:
    """``path`` exists and was written at or after ``since_ns`` (so not left from an earlier launch)."""
    try:
        return path.stat().st_mtime_ns >= since_ns
    except FileNotFoundError:
        return False


def read_manifest(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def tree_digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (empty dict when it does not exist)."""
    root = Path(root)
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def stack_bytes(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "stacks").glob("*.safetensors"))}


def hold_lock(run_dir: str, ready_file: str) -> None:
    """Body of a lock-holder subprocess: take the run directory's lock, signal, sleep until killed."""
    from brainstacks_pl.run import RunDirectory

    RunDirectory(run_dir).acquire_lock()
    Path(ready_file).write_text(str(os.getpid()))
    time.sleep(600)


if __name__ == "__main__":  # python tests/fault_helpers.py hold_lock RUN READY
    if sys.argv[1] == "hold_lock":
        hold_lock(sys.argv[2], sys.argv[3])
