"""``brainstacks evaluate``: score a run directory on evaluation tasks in three modes.

    brainstacks evaluate --run runs/demo --tasks demo [--modes base,ungated,routed] [--limit N]

Modes: ``base`` (every stack off), ``ungated`` (every stack at weight 1), ``routed`` (the
run's router picks the stacks per prompt; skipped with a message when the run has none).
Multiple-choice tasks rank the choices by mean per-token log-prob of the choice given the
prompt; generation tasks decode greedily and compare the extracted answer. Results go to
``RUN/eval/results.json``, a printed table, and TensorBoard scalars under
``RUN/tensorboard/eval`` (tag ``eval/<mode>/<task>``, step = domains completed).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections.abc import Collection, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from brainstacks_pl.answers import answers_match, extract_answer
from brainstacks_pl.commands import MODES, parse_subcommand
from brainstacks_pl.data.procedural import SOLVED, score_completion, trained_questions
from brainstacks_pl.errors import USER_ERROR_EXIT, UserError
from brainstacks_pl.evaluation.engine import NoRouterError, ScoreRequest, StackScorer
from brainstacks_pl.evaluation.scoring import encode_pair, encode_prompt, pick_choice
from brainstacks_pl.evaluation.tasks import TaskExample, TaskSpec, build_context, load_examples, resolve_tasks
from brainstacks_pl.inference import InferenceError, RoutedGenerator
from brainstacks_pl.prompts import CHAT_TEMPLATE
from brainstacks_pl.storage import atomic_write_json

log = logging.getLogger(__name__)

__all__ = [
    "evaluate_task",
    "is_solved",
    "evaluate_run",
    "write_tensorboard",
    "format_table",
    "main",
    "run",
    "no_router_message",
    "wilson_interval",
    "winner",
]

N_SAMPLES = 3
"""Generations kept per task in results.json, for a look at what the model wrote."""


def no_router_message(run_dir: str | Path) -> str:
    return f"routed: skipped, {run_dir} has no trained router (train one with configs/router_demo.yaml)"


def evaluate_task(
    scorer: StackScorer, task: TaskSpec, limit: int | None = None, exclude: Collection[str] = ()
) -> dict[str, Any]:
    """One task in the scorer's mode: accuracy and its details (``exclude``: prompts not to score)."""
    shots, examples, excluded = load_examples(task, exclude)
    examples = examples[:limit] if limit else examples
    tok, routes = scorer.tokenizer, [ex.prompt for ex in examples]
    templates = scorer.templates(routes)
    contexts = [build_context(ex, shots, template, tok) for ex, template in zip(examples, templates)]
    bos = [template != CHAT_TEMPLATE for template in templates]  # a chat template writes its own start
    result: dict[str, Any] = {"domain": task.domain, "type": task.type, "n": len(examples), "excluded": excluded}
    if task.type == "mc":
        requests, spans = [], []
        for ex, context, route, head in zip(examples, contexts, routes, bos):
            spans.append((len(requests), len(requests) + len(ex.choices)))
            requests += [ScoreRequest(*encode_pair(tok, context, choice, head), route) for choice in ex.choices]
        scores = scorer.loglikelihood(requests)
        per_example = [scores[a:b] for a, b in spans]
        result["acc"] = _mean([pick_choice(s, "mean") == ex.answer for s, ex in zip(per_example, examples)])
        result["chance"] = _mean([1.0 / len(ex.choices) for ex in examples])
        result["acc_sum"] = _mean([pick_choice(s, "sum") == ex.answer for s, ex in zip(per_example, examples)])
        result["gold_mean_logprob"] = _mean([s[ex.answer].mean_logprob for s, ex in zip(per_example, examples)])
    else:
        prompts = [encode_prompt(tok, context, head) for context, head in zip(contexts, bos)]
        texts = scorer.generate(prompts, routes, task.max_new_tokens, task.stop)
        predicted = [extract_answer(t, task.extract) for t in texts]
        result["acc"] = _mean([is_solved(t, p, ex, task) for t, p, ex in zip(texts, predicted, examples)])
        result["chance"] = 0.0  # an exact-match answer is not guessed by chance
        result["extracted"] = _mean([p is not None for p in predicted])
        result["samples"] = [
            {"prompt": ex.prompt, "output": t, "extracted": p, "gold": ex.answer}
            for ex, t, p in list(zip(examples, texts, predicted))[:N_SAMPLES]
        ]
    if scorer.mode == "routed":
        decisions = scorer.decisions(routes)
        domains = scorer.generator.router_domains
        result["route_share"] = {d: _mean([d in dec.selected for dec in decisions]) for d in domains}
        result["capability_gap"] = _mean([dec.capability_gap for dec in decisions])
    return result


def is_solved(text: str, predicted: str | None, example: TaskExample, task: TaskSpec) -> bool:
    """A reasoning-gym item by its family's own ``score_answer``; any other by ``answers_match``."""
    if example.entry is not None:
        return score_completion(text, example.entry, task.generator) >= SOLVED
    return answers_match(predicted, example.answer, task.extract)


def _mean(values: Sequence[float | bool]) -> float:
    return float(sum(values)) / len(values) if values else float("nan")


def evaluate_run(
    run_dir: str | Path,
    tasks: Sequence[TaskSpec],
    modes: Sequence[str] = MODES[::-1],
    limit: int | None = None,
    batch_size: int = 16,
    generator: RoutedGenerator | None = None,
    **load_kwargs: Any,
) -> dict[str, Any]:
    """Every task in every mode on one loaded model; a mode that cannot run is recorded as skipped."""
    generator = generator or RoutedGenerator.from_run(run_dir, **load_kwargs)
    manifest = generator.manifest
    seen = trained_questions(manifest.extra.get("settings", {}))
    results: dict[str, Any] = {
        "run": str(run_dir),
        "base_model": manifest.base_model_id,
        "stacks": [r.file for r in manifest.stacks],
        "completed_domains": list(manifest.completed_domains),
        "has_router": generator.router is not None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "limit": limit,
        "tasks": {t.name: {k: v for k, v in t.to_dict().items() if k != "name"} for t in tasks},
        "modes": {},
    }
    for mode in modes:
        try:
            scorer = StackScorer(generator, mode, batch_size)
        except NoRouterError:
            results["modes"][mode] = {"status": "skipped", "reason": no_router_message(run_dir)}
            continue
        start = time.perf_counter()
        per_task = {task.name: evaluate_task(scorer, task, limit, seen) for task in tasks}
        results["modes"][mode] = {
            "status": "ok",
            "seconds": round(time.perf_counter() - start, 3),
            "mean_acc": _mean([r["acc"] for r in per_task.values()]),
            "tasks": per_task,
        }
        log.info("evaluated %s mode in %.1fs", mode, results["modes"][mode]["seconds"])
    return results


def write_tensorboard(results: dict[str, Any], log_dir: str | Path) -> None:
    """``eval/<mode>/<task>`` accuracies and ``eval/<mode>/mean``, step = domains completed."""
    from torch.utils.tensorboard import SummaryWriter

    step = len(results.get("completed_domains", []))
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for mode, entry in results["modes"].items():
            if entry["status"] != "ok":
                continue
            for task, res in entry["tasks"].items():
                writer.add_scalar(f"eval/{mode}/{task}", res["acc"], step)
            writer.add_scalar(f"eval/{mode}/mean", entry["mean_acc"], step)
    finally:
        writer.close()


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``p`` measured on ``n`` examples."""
    if n <= 0 or p != p:
        return float("nan"), float("nan")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def winner(accs: dict[str, float], n: int, z: float = 1.96) -> str:
    """The best mode, or ``tie`` when its lead over the next is within noise (two-proportion
    z-test at 95%; the modes see the same examples, so this errs towards ``tie``)."""
    ranked = sorted(((a, m) for m, a in accs.items() if a == a), reverse=True)
    if not ranked:
        return "-"
    if len(ranked) == 1:
        return ranked[0][1]
    (p1, best), (p2, _) = ranked[0], ranked[1]
    se = math.sqrt(max(p1 * (1 - p1) + p2 * (1 - p2), 1e-12) / max(n, 1))
    return best if p1 - p2 > z * se else "tie"


def format_table(results: dict[str, Any]):
    """A rich ``Table``: one row per task: its domain and type under its name, chance level,
    accuracy per mode with its 95% interval below it, and which mode won.

    Every column but the task's holds a few characters (a mode's cell: ``0.844`` over
    ``0.72-0.92``), so three modes fit an 80-column terminal; a task name too long for what is
    left wraps onto further lines rather than being cut short."""
    from rich.table import Table
    from rich.text import Text

    modes = list(results["modes"])
    ok_modes = [m for m in modes if results["modes"][m]["status"] == "ok"]
    table = Table(
        title=f"accuracy: {results['run']}",
        caption="cells: accuracy over n examples, below it its 95% Wilson interval; chance: a uniform guess "
        "(multiple choice), 0 for exact-match generation; winner: the best mode, tie when its lead is within noise",
    )
    table.add_column("task\ndomain, type", overflow="fold", min_width=10)
    table.add_column("n", justify="right", no_wrap=True)
    table.add_column("chance", justify="right", no_wrap=True)
    for mode in modes:
        table.add_column(mode, justify="right", no_wrap=True, min_width=len("0.00-1.00"))
    table.add_column("winner", no_wrap=True, min_width=len("ungated"))

    def cell(mode: str, task: str) -> str:
        entry = results["modes"][mode]
        if entry["status"] != "ok":
            return "skipped"
        value, n = entry["tasks"][task]["acc"], entry["tasks"][task]["n"]
        lo, hi = wilson_interval(value, n)
        return f"{value:.3f}\n{lo:.2f}-{hi:.2f}"

    total_n = 0
    for name, spec in results["tasks"].items():
        first = results["modes"][ok_modes[0]]["tasks"][name] if ok_modes else {}
        n, chance = first.get("n", 0), first.get("chance")
        total_n += n
        best = winner({m: results["modes"][m]["tasks"][name]["acc"] for m in ok_modes}, n)
        table.add_row(
            Text.assemble(name, "\n", (f"{spec['domain']}, {spec['type']}", "dim")),
            str(n) if ok_modes else "-",
            "-" if chance is None else f"{chance:.3f}",
            *(cell(m, name) for m in modes),
            best,
        )
    means = {m: results["modes"][m]["mean_acc"] for m in ok_modes}
    mean_cells = [f"{means[m]:.3f}" if m in means else "skipped" for m in modes]
    table.add_row("mean", str(total_n), "", *mean_cells, winner(means, total_n), style="bold")
    return table


def run(args: argparse.Namespace) -> int:
    """``brainstacks evaluate``: score, write the results, print the table."""
    from rich.console import Console

    console = Console()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise InferenceError(f"--modes takes a comma list of {', '.join(MODES)}; got {args.modes!r}")
    if args.limit is not None and args.limit < 1:
        raise InferenceError(f"--limit must be >= 1, got {args.limit}")
    output = Path(args.output) if args.output else Path(args.run) / "eval" / "results.json"
    # Fail before scoring, not after: results that cannot be written would be lost.
    for target in [output.parent] + ([] if args.no_tensorboard else [Path(args.run) / "tensorboard" / "eval"]):
        _check_writable(target)
    try:
        tasks = resolve_tasks(args.tasks)
        results = evaluate_run(
            args.run,
            tasks,
            modes,
            args.limit,
            args.batch_size,
            device=args.device,
            dtype=args.dtype,
            quantization=args.quantization,
            model_name_or_path=args.model_name_or_path,
            accept_new_base=args.accept_new_base,
            gap_threshold=args.gap_threshold,
        )
    except (FileNotFoundError, ValueError) as err:
        if isinstance(err, UserError):
            raise
        raise InferenceError(str(err)) from err
    for entry in results["modes"].values():
        if entry["status"] != "ok":
            print(entry["reason"])
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output, results)
    if not args.no_tensorboard:
        write_tensorboard(results, Path(args.run) / "tensorboard" / "eval")
    console.print(format_table(results))
    console.print(f"results: {output}")
    return 0


def _check_writable(directory: Path) -> None:
    """``directory`` exists and is writable, or could be created in its nearest existing parent."""
    existing = next((p for p in [directory, *directory.parents] if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InferenceError(
            f"cannot write results under {directory} ({existing} is not a "
            "writable directory); give --output elsewhere and --no_tensorboard"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``brainstacks evaluate ARGS`` in-process; returns the exit code (2 on a bad request)."""
    args = parse_subcommand("evaluate", sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
