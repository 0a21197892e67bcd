"""The ``brainstacks`` command: one parser that knows every subcommand.

    brainstacks --help                 every subcommand, in well under two seconds
    brainstacks fit --config C.yaml    a training phase (LightningCLI: ``brainstacks fit --help``)
    brainstacks generate|chat|evaluate|serve ...

This module imports only the standard library: a subcommand's implementation (torch,
transformers, Lightning) is imported when that subcommand runs, so ``--help`` stays fast.
Each subcommand is declared once, in ``SUBCOMMANDS``: its help line, its arguments and the
function that runs it (``"module:function"``, called with the parsed ``argparse.Namespace``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from brainstacks_pl.errors import USER_ERROR_EXIT, UserError

__all__ = ["SUBCOMMANDS", "Subcommand", "build_parser", "main", "console_main"]

MODES = ("routed", "ungated", "base")
"""Inference modes: the stacks the router selects, every stack at weight 1, no stack."""


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory (manifest.json, stacks/, router/)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default="float32", help="base compute dtype: float32, bfloat16 or float16")
    p.add_argument("--model_name_or_path", default=None, help="base model (default: the run's base model)")
    p.add_argument(
        "--accept_new_base",
        action="store_true",
        help="use a base whose fingerprint differs from the run's (a deliberate change; docs/run_directory.md)",
    )
    p.add_argument(
        "--gap_threshold",
        type=_gap_threshold,
        default=None,
        help="novelty above which a routed prompt gets no stack (capability gap; docs/router.md); "
        "off: never by novelty; default: the router's calibrated threshold",
    )


def _gap_threshold(text: str) -> float:
    """``off`` or a number >= 0 (argparse reports anything else as a usage error, exit 2)."""
    if text.strip().lower() == "off":
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'off', got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'off', got {text!r}")
    return value


def _cache_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache_mb", type=float, default=None, help="host-memory budget of the stack cache in MiB (default: unbounded)"
    )


def _generation_options(p: argparse.ArgumentParser) -> None:
    _run_options(p)
    p.add_argument(
        "--mode",
        choices=MODES,
        default="routed",
        help="routed: stacks the router selects; ungated: every stack at weight 1; base: no stack",
    )
    p.add_argument("--max_new_tokens", type=int, default=64, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples from softmax(logits / T)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    _cache_option(p)


def _generate_arguments(p: argparse.ArgumentParser) -> None:
    _generation_options(p)
    p.add_argument("--prompt", required=True, help="the prompt text")


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    _run_options(p)
    p.add_argument(
        "--tasks",
        default="demo",
        help="comma list: demo (all bundled tasks), a bundled task name, a task YAML, or a folder of YAMLs",
    )
    p.add_argument("--modes", default="base,ungated,routed", help="comma list of base, ungated, routed")
    p.add_argument("--limit", type=int, default=None, help="score only the first N examples of each task")
    p.add_argument("--batch_size", type=int, default=16, help="sequences per forward")
    p.add_argument("--quantization", default=None, choices=[None, "nf4"], help="load the base in 4 bit (nf4)")
    p.add_argument("--output", default=None, help="results file (default: RUN/eval/results.json)")
    p.add_argument("--no_tensorboard", action="store_true", help="do not write TensorBoard scalars")


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    _run_options(p)
    _cache_option(p)
    add = p.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    add("--port", type=int, default=8000, help="TCP port (0: any free port, logged at startup)")
    add(
        "--api_key",
        action="append",
        default=None,
        metavar="KEY",
        help="bearer key clients must send (repeatable or comma-separated; also BRAINSTACKS_API_KEYS); "
        "with a key every route but /health needs 'Authorization: Bearer KEY'",
    )
    add(
        "--allow_unauthenticated",
        action="store_true",
        help="listen on a non-loopback --host without any API key (refused otherwise)",
    )
    add("--served_name", default=None, help="model name clients send (default: the run directory's name)")
    add("--max_batch", type=int, default=16, help="requests decoded together in one batch at most")
    add("--max_queue", type=int, default=64, help="requests waiting for a batch slot at most; beyond it: HTTP 429")
    add("--max_tokens", type=int, default=256, help="default and upper bound of max_tokens per request")
    add("--max_body_mb", type=float, default=1.0, help="larger request bodies get HTTP 400 before parsing")
    add("--request_timeout", type=float, default=300.0, help="seconds a request may wait and decode in all (then 504)")
    add("--shutdown_timeout", type=float, default=30.0, help="on SIGTERM, seconds in-flight requests get to finish")
    add("--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 suits small models)")
    add("--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="log level")


@dataclass(frozen=True)
class Subcommand:
    help: str
    """One line for ``brainstacks --help``."""
    run: str
    """``module:function`` called with the parsed namespace; returns the exit status."""
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    """Adds the subcommand's arguments; None: the implementation parses its own (``fit``)."""


SUBCOMMANDS: dict[str, Subcommand] = {
    "fit": Subcommand(
        "train a phase from a YAML config: SFT curriculum, router, DPO, GRPO (brainstacks fit --help)",
        "brainstacks_pl.cli:run_fit",
    ),
    "generate": Subcommand(
        "answer one prompt with the stacks the router selects",
        "brainstacks_pl.inference_cli:run_generate",
        _generate_arguments,
    ),
    "chat": Subcommand(
        "interactive session with routed stacks", "brainstacks_pl.inference_cli:run_chat", _generation_options
    ),
    "evaluate": Subcommand(
        "score a run on evaluation tasks: base vs ungated vs routed",
        "brainstacks_pl.evaluation.run_eval:run",
        _evaluate_arguments,
    ),
}
SUBCOMMANDS["serve"] = Subcommand(
    "OpenAI-compatible HTTP server; every request routed to its own stacks, batched together",
    "brainstacks_pl.serve.server:run",
    _serve_arguments,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainstacks",
        allow_abbrev=False,
        description="Continual multi-domain fine-tuning with frozen MoE-LoRA stacks.",
        epilog="User errors print one 'error: ...' line and exit 2; set BRAINSTACKS_DEBUG=1 for the traceback.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of user errors too (also BRAINSTACKS_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, spec in SUBCOMMANDS.items():
        if spec.arguments is None:
            sub.add_parser(name, help=spec.help, add_help=False)
        else:
            spec.arguments(sub.add_parser(name, help=spec.help, description=spec.help, allow_abbrev=False))
    return parser


def parse_subcommand(name: str, argv: Sequence[str]) -> argparse.Namespace:
    """Parse one subcommand's arguments (for the implementation modules' own ``main(argv)``)."""
    return build_parser().parse_args([name, *argv])


def _resolve(target: str) -> Callable[..., Any]:
    module, _, function = target.partition(":")
    return getattr(import_module(module), function)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``brainstacks`` command; returns its exit status (2 on a user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("BRAINSTACKS_DEBUG", "") not in ("", "0")
    if argv[:1] == ["--debug"]:
        debug, argv = True, argv[1:]
    try:
        if argv[:1] == ["fit"]:
            # LightningCLI owns fit's options (jsonargparse, YAML configs, --print_config).
            return int(_resolve(SUBCOMMANDS["fit"].run)(argv) or 0)
        args = build_parser().parse_args(argv)
        return int(_resolve(SUBCOMMANDS[args.command].run)(args) or 0)
    except UserError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def console_main() -> None:
    """Console-script entry point of ``brainstacks``."""
    sys.exit(main())
