"""``brainstacks generate`` and ``brainstacks chat``: routed inference from a run directory.

    brainstacks generate --run RUN --prompt "What is 12 times 7?" [--mode routed|ungated|base]
    brainstacks chat --run RUN

In ``chat`` every line is a prompt unless it starts with ``/``: ``/route TEXT`` shows the
router's weights without generating, ``/stacks`` the resident stacks and the cache,
``/mode routed|ungated|base``, ``/greedy``, ``/temp X``, ``/tokens N``, ``/help``, ``/quit``.
A bad command or a bad prompt prints an error and the session goes on.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence, TextIO

from brainstacks_pl.inference import MODES, Generation, InferenceError, RouteDecision, RoutedGenerator
from brainstacks_pl.storage import StackFileError

__all__ = ["main", "build_parser", "format_route", "ChatSession"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainstacks", description="Routed inference with the stacks of a run directory.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("generate", "answer one prompt"), ("chat", "interactive session on stdin")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--run", required=True, help="run directory (manifest.json, stacks/, router/)")
        if name == "generate":
            p.add_argument("--prompt", required=True, help="the prompt text")
        p.add_argument("--mode", choices=MODES, default="routed", help="routed: stacks the router selects; ungated: every stack at weight 1; base: no stack")
        p.add_argument("--max_new_tokens", type=int, default=64, help="tokens to generate at most")
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples from softmax(logits / T)")
        p.add_argument("--seed", type=int, default=0, help="sampling seed")
        p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
        p.add_argument("--dtype", default="float32", help="base compute dtype")
        p.add_argument("--model_name_or_path", default=None, help="base model (default: the run's base_model_id)")
        p.add_argument("--cache_mb", type=float, default=None, help="host-memory budget of the stack cache in MiB (default: unbounded)")
    return parser


def format_route(decision: RouteDecision, gate: float) -> str:
    probs = "  ".join(f"{d} {p:.2f}" for d, p in decision.probs.items())
    if decision.capability_gap:
        return f"route: {probs}\n  no domain reached the gate {gate:.2f} (capability gap): answering with the base model only"
    weights = ", ".join(f"{d} x{decision.weights[d]:.2f}" for d in decision.selected)
    return f"route: {probs}\n  loaded: {weights}"


def _print_generation(gen: Generation, generator: RoutedGenerator, out: TextIO) -> None:
    if gen.route is not None:
        print(format_route(gen.route, generator.gate_threshold), file=out)
    else:
        print(f"mode: {gen.mode}", file=out)
    print(gen.text, file=out)


class ChatSession:
    """The interactive loop's state and command dispatch (testable with any text streams)."""

    def __init__(self, generator: RoutedGenerator, mode: str = "routed", max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0, out: TextIO = sys.stdout):
        self.generator, self.mode, self.max_new_tokens, self.temperature, self.seed, self.out = generator, mode, max_new_tokens, temperature, seed, out

    def say(self, text: str) -> None:
        print(text, file=self.out)

    def handle(self, line: str) -> bool:
        """Process one input line; False ends the session."""
        line = line.rstrip("\n")
        if not line.strip():
            return True
        if not line.startswith("/"):
            gen = self.generator.generate([line], self.mode, self.max_new_tokens, self.temperature, self.seed)[0]
            _print_generation(gen, self.generator, self.out)
            return True
        command, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if command in ("quit", "exit"):
            return False
        if command == "route":
            if not arg:
                raise InferenceError("usage: /route TEXT")
            self.say(format_route(self.generator.route([arg])[0], self.generator.gate_threshold))
        elif command == "stacks":
            cache = self.generator.cache
            resident = ", ".join(f"{s.domain}-r{s.round}" for s in self.generator.stacks.frozen_stacks) or "none"
            self.say(f"resident stacks: {resident}\ncache: {len(cache.cached_files)} files, {cache.bytes_used / 2**20:.2f} MiB, {cache.hits} hits, {cache.misses} misses, {cache.evictions} evictions")
        elif command == "mode":
            if arg not in MODES:
                raise InferenceError(f"usage: /mode {'|'.join(MODES)}")
            self.mode = arg
            self.say(f"mode: {arg}")
        elif command == "greedy":
            self.temperature = 0.0
            self.say("greedy decoding")
        elif command == "temp":
            self.temperature = _number(arg, float, "/temp X (X >= 0)", minimum=0.0)
            self.say(f"temperature: {self.temperature}")
        elif command == "tokens":
            self.max_new_tokens = _number(arg, int, "/tokens N (N >= 1)", minimum=1)
            self.say(f"max new tokens: {self.max_new_tokens}")
        elif command == "help":
            self.say(__doc__.split("In ``chat``")[1].strip())
        else:
            raise InferenceError(f"unknown command /{command}; try /help")
        return True

    def run(self, lines: TextIO, interactive: bool = False) -> None:
        self.say(f"brainstacks chat: mode {self.mode}; /help for commands, /quit to leave")
        while True:
            if interactive:
                print("> ", end="", file=self.out, flush=True)
            line = lines.readline()
            if not line:
                return
            try:
                if not self.handle(line):
                    return
            except (InferenceError, StackFileError, ValueError) as err:
                self.say(f"error: {err}")


def _number(text: str, kind, usage: str, minimum: float):
    try:
        value = kind(text)
    except ValueError:
        raise InferenceError(f"usage: {usage}") from None
    if value < minimum:
        raise InferenceError(f"usage: {usage}")
    return value


def main(argv: Sequence[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Entry point of ``brainstacks generate|chat``; returns the exit code."""
    args = build_parser().parse_args(argv)
    out = stdout or sys.stdout
    try:
        generator = RoutedGenerator.from_run(
            args.run, device=args.device, model_name_or_path=args.model_name_or_path, dtype=args.dtype,
            cache_bytes=None if args.cache_mb is None else int(args.cache_mb * 2**20), require_router=args.mode == "routed" and args.command == "generate",
        )
        if args.command == "generate":
            gen = generator.generate([args.prompt], args.mode, args.max_new_tokens, args.temperature, args.seed)[0]
            _print_generation(gen, generator, out)
            return 0
    except (InferenceError, StackFileError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    stream = stdin or sys.stdin
    if args.mode == "routed" and generator.router is None:
        print("this run has no trained router: chat starts in mode ungated", file=out)
        args.mode = "ungated"
    ChatSession(generator, args.mode, args.max_new_tokens, args.temperature, args.seed, out).run(stream, interactive=stream.isatty())
    return 0
