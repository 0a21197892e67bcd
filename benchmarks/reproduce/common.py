"""What every reproduction script shares: its flags, ``brainstacks fit`` runs, reading a run, writing a result.

Every measurement here is a real ``brainstacks fit`` (through ``cli_main``) with ``--config``
plus CLI overrides, read back from the run directory (``manifest.json``,
``forgetting_matrix.json``), so the same script reproduces the paper's scale when given a GPU
config (``--config configs/tinyllama_nf4.yaml``) instead of the CPU demo. ``--dry-run`` prints
the planned command lines and checks that each one parses (``--print_config``) without training.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import yaml

from brainstacks_pl.cli import cli_main
from brainstacks_pl.storage import MANIFEST_NAME

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "demo.yaml"
RESULTS = REPO / "benchmarks" / "results" / "reproduce"
RUNS = REPO / "runs" / "reproduce"
LR_FLAG = "--model.init_args.optimizer.init_args.lr"

__all__ = [
    "REPO",
    "LR_FLAG",
    "Bench",
    "parser",
    "add_training_flags",
    "training_overrides",
    "domains_flag",
    "config_domains",
    "curve",
    "fmt",
    "finite",
    "read_manifest",
    "read_forgetting",
]


def parser(doc: str, domains: list[str] | None = None) -> argparse.ArgumentParser:
    """The flags every script takes; ``domains`` is the default curriculum (None: the config's first domain)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help="the SFT config (configs/tinyllama_nf4.yaml for the paper's scale)",
    )
    p.add_argument("--domains", nargs="+", default=domains, help="domain names of the config, in curriculum order")
    p.add_argument("--out", type=Path, default=RESULTS, help="where <name>.json and <name>.md go")
    p.add_argument("--runs", type=Path, default=RUNS, help="parent of this script's run directories")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep existing run directories (a finished run is read, a killed one resumes)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the planned brainstacks fit commands, check they parse, train nothing",
    )
    p.add_argument(
        "--tag",
        default=None,
        help="suffix of the result and run names, to keep a variant beside the default measurement",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: two OpenMP pools on a shared 2-core CPU thrash)"
    )
    return p


def add_training_flags(p: argparse.ArgumentParser, epochs: int, batches: int, rounds: int | None = 1) -> None:
    """How long each stack trains: the demo-sized defaults; a GPU config wants e.g. ``--epochs 8 --batches 200``."""
    p.add_argument(
        "--epochs", type=int, default=epochs, help="--trainer.max_epochs per round (one validation per epoch)"
    )
    p.add_argument(
        "--batches", type=int, default=batches, help="--trainer.limit_train_batches: training steps per epoch"
    )
    if rounds is not None:
        p.add_argument("--rounds", type=int, default=rounds, help="--boosting.max_rounds")


def training_overrides(a: argparse.Namespace) -> list[str]:
    rounds = ["--boosting.max_rounds", str(a.rounds)] if hasattr(a, "rounds") else []
    return ["--trainer.max_epochs", str(a.epochs), "--trainer.limit_train_batches", str(a.batches), *rounds]


def config_domains(config: Path) -> list[dict[str, Any]]:
    return yaml.safe_load(Path(config).read_text())["data"]["init_args"]["domains"]


def domains_flag(config: Path, names: list[str] | None) -> list[str]:
    """``--data.domains=[...]``: the config's own entries (paths, formats) for ``names``, in that order."""
    entries = {d["name"]: d for d in config_domains(config)}
    names = names or [next(iter(entries))]
    missing = [n for n in names if n not in entries]
    if missing:
        raise SystemExit(f"domains {missing} are not in {config} (it has {list(entries)})")
    return [f"--data.domains={json.dumps([entries[n] for n in names])}"]


@dataclass
class Bench:
    """One script's runs: plans ``brainstacks fit`` commands, runs them (or only prints them) and writes the result."""

    name: str
    args: argparse.Namespace
    commands: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        torch.set_num_threads(self.args.threads)
        self.args.domains = self.args.domains or [config_domains(self.args.config)[0]["name"]]
        self.code = _code_version()
        if self.args.tag:
            self.name = f"{self.name}-{self.args.tag}"

    @property
    def dry(self) -> bool:
        return self.args.dry_run

    def run_dir(self, label: str) -> Path:
        return self.args.runs / self.name / label

    def fit(
        self,
        label: str,
        overrides: list[str],
        config: Path | None = None,
        fresh: bool = True,
        done_if: str | None = None,
    ) -> Path:
        """``brainstacks fit --config C --trainer.default_root_dir RUN <overrides>``; returns RUN.

        ``fresh`` removes an earlier run directory first (unless ``--reuse``); ``fresh=False``
        continues a run on purpose (a later phase, or more domains). ``done_if``: a file in RUN
        that a finished phase leaves; with ``--reuse`` such a phase is not run again (a phase
        that retrains on rerun, unlike the SFT curriculum which skips finished domains).
        """
        run_dir = self.run_dir(label)
        argv = [
            "fit",
            "--config",
            str(config or self.args.config),
            "--trainer.default_root_dir",
            str(run_dir),
            "--trainer.enable_progress_bar",
            "false",
            *overrides,
        ]
        self.commands.append("brainstacks " + shlex.join(_relative(a) for a in argv))
        if self.dry:
            print(self.commands[-1])
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    _cli([*argv, "--print_config"])  # parses every override against the config, loads nothing
            except SystemExit as exit:
                if exit.code not in (0, None):
                    raise
            return run_dir
        if fresh and run_dir.exists() and not self.args.reuse:
            shutil.rmtree(run_dir)
        if self.args.reuse and done_if and (run_dir / done_if).is_file():
            return run_dir
        _cli(argv)
        # The stacks' own training time (the manifest's), so a --reuse rerun reports the original run's.
        self.seconds[label] = round(sum(s.get("train_seconds") or 0 for s in read_manifest(run_dir)["stacks"]), 1)
        return run_dir

    def write(self, result: dict[str, Any], title: str, body: str) -> dict[str, Any]:
        """``<out>/<name>.json`` and ``.md``; the Markdown names the command that made it."""
        command = "python " + shlex.join([_relative(a) for a in [sys.argv[0], *sys.argv[1:]]])
        result = {
            "name": self.name,
            "command": command,
            "config": _relative(str(self.args.config)),
            "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), "
            f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
            "git_at_write": self.code,
            "seconds": self.seconds,
            "fit_commands": self.commands,
            **result,
        }
        self.args.out.mkdir(parents=True, exist_ok=True)
        (self.args.out / f"{self.name}.json").write_text(json.dumps(result, indent=2) + "\n")
        title = f"{title} [{self.args.tag}]" if self.args.tag else title
        md = (
            f"## {title}\n\nCommand: `{command}` (config `{result['config']}`; {result['machine']}; "
            f"stack training seconds per run, noisy on a shared CPU: {self.seconds})\n\n{body.strip()}\n"
        )
        (self.args.out / f"{self.name}.md").write_text(md)
        print(md)
        return result


def _cli(argv: list[str]) -> None:
    """``cli_main`` without this script's own flags in ``sys.argv`` (LightningCLI warns about both)."""
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        cli_main(argv)


def _code_version() -> str:
    """The commit the runs used, and whether the library had uncommitted edits (other work in the same tree)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "brainstacks_pl")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted library edits" if dirty else "")


def _relative(arg: str) -> str:
    return arg.replace(str(REPO) + "/", "")


def read_manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / MANIFEST_NAME).read_text())


def read_forgetting(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "forgetting_matrix.json").read_text())


def curve(record: dict[str, Any], step_offset: int = 0) -> list[tuple[int, float]]:
    """(step, val loss) per validation of a stack: one validation per epoch, so evenly spaced."""
    losses = record["val_losses"]
    every = record["steps"] / max(len(losses), 1)
    return [(step_offset + round((i + 1) * every), loss) for i, loss in enumerate(losses)]


def finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
