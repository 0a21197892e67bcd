"""``brainstacks generate`` and ``brainstacks chat``: routed inference from a run directory.

    brainstacks generate --run RUN --prompt "What is 12 times 7?" [--mode routed|ungated|base]
    brainstacks chat --run RUN

Both send the prompt exactly as training rendered it (``prompts.format_prompt``); ``chat``
sends the conversation so far (``User:`` / ``Assistant:`` turns), so its first turn routes and
answers exactly like ``generate`` with the same text. ``HELP`` lists chat's commands.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from brainstacks_pl.commands import MODES, parse_subcommand
from brainstacks_pl.errors import USER_ERROR_EXIT, UserError
from brainstacks_pl.inference import Generation, InferenceError, RouteDecision, RoutedGenerator
from brainstacks_pl.prompts import Turn, prompt_ids, prompt_text
from brainstacks_pl.routing.spec import RouterSpec
from brainstacks_pl.storage import StackFileError

__all__ = ["main", "run_generate", "run_chat", "format_route", "ChatSession", "HELP"]

HELP = """Type a message and press Enter; the conversation so far is sent with it.
Commands:
  /route TEXT      show the router's weights for TEXT without generating
  /stacks          the resident stacks and the stack cache
  /mode MODE       routed, ungated or base
  /greedy          greedy decoding
  /temp X          sample at temperature X (0: greedy)
  /tokens N        answer with at most N new tokens
  /reset           forget the conversation so far
  /help            this text
  /quit            leave (also /exit or Ctrl-D)
Up/Down recall earlier lines where the terminal supports it."""


def format_route(decision: RouteDecision, spec: RouterSpec) -> str:
    probs = "  ".join(f"{d} {p:.2f}" for d, p in decision.probs.items())
    novel = decision.novelty is not None and spec.gap_threshold is not None and decision.novelty > spec.gap_threshold
    if decision.capability_gap:
        why = (
            f"the prompt is unlike the router's training prompts "
            f"(novelty {decision.novelty:.2f} > {spec.gap_threshold:.2f})"
            if novel
            else f"no domain reached the gate {spec.gate_threshold:.2f}"
        )
        return f"route: {probs}\n  {why} (capability gap): answering with the base model only"
    weights = ", ".join(f"{d} x{decision.weights[d]:.2f}" for d in decision.selected)
    return f"route: {probs}\n  loaded: {weights}"


def _print_generation(gen: Generation, generator: RoutedGenerator, out: TextIO) -> None:
    if gen.route is not None:
        print(format_route(gen.route, generator.spec), file=out)
    else:
        print(f"mode: {gen.mode}", file=out)
    print(gen.text, file=out)


class ChatSession:
    """The interactive loop's state and command dispatch (testable with any text streams)."""

    def __init__(
        self,
        generator: RoutedGenerator,
        mode: str = "routed",
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
        out: TextIO = sys.stdout,
    ):
        self.generator, self.mode, self.max_new_tokens, self.temperature, self.seed, self.out = (
            generator,
            mode,
            max_new_tokens,
            temperature,
            seed,
            out,
        )
        self.history: list[Turn] = []

    def conversation(self, line: str) -> str:
        """The prompt for ``line``: the history and the new user turn, oldest turns dropped
        until the rendered prompt leaves room for the answer in the model's context."""
        turns = [*self.history, ("User", line)]
        gen = self.generator
        while (
            len(turns) > 1
            and gen.context_length is not None
            and len(prompt_ids(gen.tokenizer, prompt_text(turns), gen.template)) + self.max_new_tokens
            > gen.context_length
        ):
            turns = turns[2:]
        return prompt_text(turns)

    def answer(self, line: str) -> None:
        start = time.perf_counter()
        gen = self.generator.generate(
            [self.conversation(line)], self.mode, self.max_new_tokens, self.temperature, self.seed
        )[0]
        seconds = time.perf_counter() - start
        _print_generation(gen, self.generator, self.out)
        self.say(f"[{len(gen.tokens)} tokens, {len(gen.tokens) / max(seconds, 1e-9):.1f} tokens/s]")
        self.history += [("User", line), ("Assistant", gen.text.strip())]

    def say(self, text: str) -> None:
        print(text, file=self.out)

    def handle(self, line: str) -> bool:
        """Process one input line; False ends the session."""
        line = line.rstrip("\n")
        if not line.strip():
            return True
        if not line.startswith("/"):
            self.answer(line)
            return True
        command, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if command in ("quit", "exit"):
            return False
        if command == "route":
            if not arg:
                raise InferenceError("usage: /route TEXT")
            self.say(format_route(self.generator.route([arg])[0], self.generator.spec))
        elif command == "stacks":
            cache = self.generator.cache
            resident = ", ".join(f"{s.domain}-r{s.round}" for s in self.generator.stacks.frozen_stacks) or "none"
            self.say(
                f"resident stacks: {resident}\ncache: {len(cache.cached_files)} files, {cache.bytes_used / 2**20:.2f} "
                f"MiB, {cache.hits} hits, {cache.misses} misses, {cache.evictions} evictions"
            )
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
        elif command == "reset":
            self.history = []
            self.say("conversation cleared")
        elif command == "help":
            self.say(HELP)
        else:
            raise InferenceError(f"unknown command /{command}; try /help")
        return True

    def run(self, lines: TextIO, interactive: bool = False) -> None:
        self.say(f"brainstacks chat: mode {self.mode}; /help for commands, /quit to leave")
        read = _line_editor() if interactive and lines is sys.stdin else None
        while True:
            if read is not None:
                try:
                    line = read("> ")
                except EOFError:
                    self.say("")
                    return
            else:
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


def _line_editor():
    """``input`` with line editing and history (the standard library's ``readline``) when present."""
    try:
        import readline  # noqa: F401  (importing it gives ``input`` editing and Up/Down history)
    except ImportError:  # Windows without pyreadline: plain input
        pass
    return input


def _number(text: str, kind, usage: str, minimum: float):
    try:
        value = kind(text)
    except ValueError:
        raise InferenceError(f"usage: {usage}") from None
    if value < minimum:
        raise InferenceError(f"usage: {usage}")
    return value


def _open_generator(args: argparse.Namespace, require_router: bool) -> RoutedGenerator:
    return RoutedGenerator.from_run(
        args.run,
        device=args.device,
        model_name_or_path=args.model_name_or_path,
        dtype=args.dtype,
        cache_bytes=None if args.cache_mb is None else int(args.cache_mb * 2**20),
        require_router=require_router,
        accept_new_base=args.accept_new_base,
        gap_threshold=args.gap_threshold,
    )


def run_generate(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    """``brainstacks generate``: one prompt, the route and the answer."""
    generator = _open_generator(args, require_router=args.mode == "routed")
    gen = generator.generate([args.prompt], args.mode, args.max_new_tokens, args.temperature, args.seed)[0]
    _print_generation(gen, generator, stdout or sys.stdout)
    return 0


def run_chat(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """``brainstacks chat``: an interactive session on stdin."""
    out = stdout or sys.stdout
    generator = _open_generator(args, require_router=False)
    stream = stdin or sys.stdin
    if stdin is None and hasattr(stream, "reconfigure"):
        stream.reconfigure(errors="surrogateescape")  # a non-UTF-8 byte is one bad prompt, not the end of the session
    if args.mode == "routed" and generator.router is None:
        print("this run has no trained router: chat starts in mode ungated", file=out)
        args.mode = "ungated"
    ChatSession(generator, args.mode, args.max_new_tokens, args.temperature, args.seed, out).run(
        stream, interactive=stream.isatty()
    )
    return 0


def main(argv: Sequence[str], stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """``brainstacks generate|chat ARGS`` in-process (``argv[0]`` is the subcommand); returns the exit code."""
    args = parse_subcommand(argv[0], argv[1:])
    try:
        if args.command == "generate":
            return run_generate(args, stdout)
        return run_chat(args, stdin, stdout)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT
