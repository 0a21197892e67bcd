"""The README's journey on a tiny run, in order: SFT, router, generate, chat (through a
pseudo-terminal), DPO, GRPO, evaluate. Checks what a new user reads: each phase ends with a
summary that says where its artifact is, chat-formatted and raw prompts route the same, and a
rerun of a finished phase says so and names the settings it ignores."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_helpers import TINY_DOMAINS, tiny_sft_args
from test_dpo import dpo_args
from test_grpo import grpo_args
from test_router import REPO, router_args, sft_run  # noqa: F401  (sft_run: the tiny SFT run fixture)

from brainstacks_pl import inference_cli
from brainstacks_pl.cli import cli_main
from brainstacks_pl.evaluation import run_eval

pty = pytest.importorskip("pty")  # POSIX only (the pseudo-terminal part)


def _flat(text: str) -> str:
    """Printed text with rich's wrapping undone (a table title wraps to the table's width)."""
    return " ".join(text.split())


def _generate(run: Path, prompt: str) -> str:
    out = io.StringIO()
    assert (
        inference_cli.main(["generate", "--run", str(run), "--prompt", prompt, "--max_new_tokens", "3"], stdout=out)
        == 0
    )
    return out.getvalue()


def _route_line(text: str) -> str:
    return next(line.strip() for line in text.splitlines() if line.strip().startswith("route:"))


class Terminal:
    """A child process on a pseudo-terminal: what a user at a terminal sees and types."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.master, self.text = master, ""

    def read_until(self, pattern: str, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text):
            ready, _, _ = select.select([self.master], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise AssertionError(f"timed out waiting for {pattern!r}; the terminal shows:\n{self.text}")
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # the child closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"the process ended before {pattern!r}; the terminal shows:\n{self.text}")
            self.text += chunk.decode(errors="replace").replace("\r\n", "\n")
        return self.text

    def type(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=30)
        finally:
            os.close(self.master)


def test_the_readme_journey_on_a_tiny_run(sft_run, tmp_path, capsys, caplog, monkeypatch):  # noqa: F811
    monkeypatch.setenv("COLUMNS", "220")  # rich tables at a readable width in the captured output
    run = sft_run
    caplog.set_level(logging.INFO)

    # SFT ran in the fixture; a rerun with a changed setting says it is finished and ignores it.
    cli_main(
        tiny_sft_args(
            json.loads((run / "manifest.json").read_text())["base_model_id"],
            run,
            TINY_DOMAINS,
            {"boosting.max_rounds": 1},
        )
    )
    out = _flat(capsys.readouterr().out)
    assert "SFT: each domain's validation loss" in out and f"stacks: {run / 'stacks'}" in out
    assert "already finished, nothing to do" in out and "trainer.max_epochs: 1 -> 2" in out

    # Router: progress through discovery, a summary with before/after and where it was saved.
    cli_main(router_args(run))
    out = _flat(capsys.readouterr().out)
    assert "outcome discovery (examples):" in caplog.text
    assert "untrained vs best epoch" in out and "val_bce" in out and f"router: {run / 'router'}" in out
    assert "capability gap: prompts with novelty above" in out
    cli_main(router_args(run))
    out = _flat(capsys.readouterr().out)
    assert "already finished, nothing to do" in out and f"router: {run / 'router'}" in out

    # generate: a raw prompt and the same prompt typed as a chat turn route (and answer) the same.
    raw, typed = _generate(run, "Hi, I'm Tom."), _generate(run, "User: Hi, I'm Tom.")
    assert raw == typed and _route_line(raw).startswith("route: ")

    # chat on a pseudo-terminal: the first turn routes like generate; tokens/s; plain /help.
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        "TERM": "dumb",
    }
    term = Terminal([sys.executable, "-m", "brainstacks_pl", "chat", "--run", str(run), "--max_new_tokens", "3"], env)
    try:
        term.read_until(r"/help for commands")
        term.type("Hi, I'm Tom.")
        shown = term.read_until(r"tokens/s\]")
        assert _route_line(shown) == _route_line(raw)
        term.type("/help")
        shown = term.read_until(r"/quit +leave")
        assert "``" not in shown and "/reset" in shown
        term.type("/quit")
    finally:
        assert term.close() == 0

    # DPO on chat, GRPO on math: trained as served (routed: the run has a router), each ends with
    # its before/after table and its stack file; a DPO rerun says it is finished.
    cli_main(dpo_args(run))
    out = _flat(capsys.readouterr().out)
    assert "served as: routed by the trained router" in out and "val_loss" in out
    assert re.search(rf"stack: {re.escape(str(run / 'stacks'))}/chat-r\d\.safetensors", out)
    cli_main(dpo_args(run, "--model.beta", "0.2"))
    out = _flat(capsys.readouterr().out)
    assert "already finished, nothing to do" in out and "model.init_args.beta: 0.1 -> 0.2" in out
    cli_main(grpo_args(run))
    out = _flat(capsys.readouterr().out)
    assert "grpo on math" in out and "served as: routed by the trained router" in out
    assert re.search(rf"stack: {re.escape(str(run / 'stacks'))}/math-r\d\.safetensors", out)
    alignment = json.loads((run / "manifest.json").read_text())["extra"]["alignment"]
    assert [(a["phase"], a["served"]) for a in alignment] == [
        ("dpo", "routed by the trained router"),
        ("grpo", "routed by the trained router"),
    ]

    # evaluate: chance per task, intervals, a winner, and where the results are.
    assert (
        run_eval.main(["--run", str(run), "--tasks", "demo", "--limit", "2", "--batch_size", "8", "--no_tensorboard"])
        == 0
    )
    out = _flat(capsys.readouterr().out)
    assert "chance" in out and "winner" in out and f"results: {run / 'eval' / 'results.json'}" in out
