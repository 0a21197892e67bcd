"""The paper's claims on a real pretrained LLM, judged by someone else's verifiers.

    python benchmarks/reproduce_real.py            # runs/smollm2: SFT, router, evaluation, GRPO

SmolLM2-135M-Instruct (``smollm2-135m-instruct``) learns five reasoning-gym families
(``configs/smollm2_sft.yaml``), the router is trained over them (``configs/smollm2_router.yaml``)
and GRPO refines the arith domain in a copy of the run (``configs/smollm2_grpo.yaml``). Every
phase is a plain ``brainstacks fit``; a finished phase is not trained again, so a rerun only
re-measures. Every accuracy is exact-match by the family's own ``score_answer`` on the
``final`` answer (``brainstacks_pl/answers.py``), on held-out items (another seed; questions
the run trained on are dropped), in the template each configuration is served with (the base
alone: its own chat template). Chance is 0 for a free-form answer; intervals are 95% Wilson.

Writes ``benchmarks/results/real/{accuracy,forgetting,routing,general,grpo}.json`` and
``benchmarks/results/real/summary.md`` (the "On a real model" section of RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
sys.path.insert(0, str(REPO / "benchmarks"))

from report_json import write_report  # noqa: E402

from brainstacks_pl.data.procedural import trained_questions  # noqa: E402
from brainstacks_pl.evaluation.engine import StackScorer  # noqa: E402
from brainstacks_pl.evaluation.run_eval import evaluate_task, wilson_interval  # noqa: E402
from brainstacks_pl.evaluation.tasks import resolve_tasks  # noqa: E402
from brainstacks_pl.inference import RoutedGenerator  # noqa: E402
from brainstacks_pl.storage import Manifest  # noqa: E402

GRPO_DOMAIN = "arith"


def fit(config: Path, run: Path) -> float:
    """``brainstacks fit`` of one phase (a finished one says so and returns at once); seconds taken."""
    start = time.perf_counter()
    command = ["brainstacks", "fit", "--config", str(config), "--trainer.default_root_dir", str(run)]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return round(time.perf_counter() - start, 1)


def _acc(result: dict[str, Any]) -> dict[str, Any]:
    low, high = wilson_interval(result["acc"], result["n"])
    out = {"acc": round(result["acc"], 4), "ci95": [round(low, 4), round(high, 4)], "n": result["n"]}
    if "route_share" in result:
        out["route_share"] = {d: round(v, 4) for d, v in result["route_share"].items()}
        out["capability_gap"] = round(result["capability_gap"], 4)
    return out


class Measure:
    """One loaded run: accuracy of any configuration on any task, logged as it goes."""

    def __init__(self, run: Path, batch_size: int):
        self.gen = RoutedGenerator.from_run(run)
        self.manifest: Manifest = self.gen.manifest
        self.seen = trained_questions(self.manifest.extra.get("settings", {}))
        self.batch_size = batch_size

    def accuracy(self, task, mode: str, domains: list[str] | None = None) -> dict[str, Any]:
        start = time.perf_counter()
        scorer = StackScorer(self.gen, mode, self.batch_size, domains)
        result = evaluate_task(scorer, task, exclude=self.seen)
        label = mode if domains is None else f"stacks of {'+'.join(domains)}"
        print(
            f"  {task.name:16s} {label:40s} acc {result['acc']:.3f} (n={result['n']}, "
            f"{result['excluded']} trained-on items dropped) {time.perf_counter() - start:.0f}s",
            flush=True,
        )
        return {**_acc(result), "excluded": result["excluded"]}

    def agreement(self, prompts: list[str], mode: str, reference: list[str], max_new_tokens: int) -> dict[str, Any]:
        texts = [g.text for g in self.gen.generate(prompts, mode, max_new_tokens)]
        same = [a.strip() == b.strip() for a, b in zip(texts, reference)]
        return {"exact_agreement": round(sum(same) / len(same), 4), "samples": texts[:4]}


def per_domain(m: Measure, tasks: dict[str, Any]) -> tuple[dict, dict]:
    """Per domain: base, at freeze (= as frozen), isolated, ungated, routed; the forgetting matrix in accuracy."""
    domains = [d for d in m.manifest.domains if d in tasks]
    forgetting: dict[str, dict[str, Any]] = {}
    for j, after in enumerate(domains):
        on = domains[: j + 1]
        forgetting[after] = {d: m.accuracy(tasks[d], "ungated", on) for d in on}
    routed = m.gen.router is not None
    table = {}
    for d in domains:
        table[d] = {
            "base": m.accuracy(tasks[d], "base"),
            "at_freeze": forgetting[d][d],
            "isolated": m.accuracy(tasks[d], "ungated", [d]),
            "ungated": forgetting[domains[-1]][d],
            "routed": m.accuracy(tasks[d], "routed") if routed else None,
        }
    return table, forgetting


def unseen_families(m: Measure, tasks: list) -> dict[str, Any]:
    out = {}
    for task in tasks:
        routed = m.accuracy(task, "routed")
        out[task.name] = {
            "base": m.accuracy(task, "base"),
            "routed": routed,
            "capability_gap": routed["capability_gap"],
        }
    return out


def general_ability(m: Measure, prompts: list[str], max_new_tokens: int) -> dict[str, Any]:
    """General chat prompts outside every domain: how often the served model answers exactly as the base does."""
    base = [g.text for g in m.gen.generate(prompts, "base", max_new_tokens)]
    result = {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "base_samples": base[:4]}
    for mode in ("ungated", "routed"):
        if mode == "routed" and m.gen.router is None:
            continue
        result[mode] = m.agreement(prompts, mode, base, max_new_tokens)
    if m.gen.router is not None:
        result["routed"]["capability_gap"] = round(
            sum(d.capability_gap for d in m.gen.route(prompts)) / len(prompts), 4
        )
    return result


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    low, high = entry["ci95"]
    return f"{entry['acc']:.2f} [{low:.2f}, {high:.2f}]"


def summary(meta: dict, accuracy: dict, forgetting: dict, routing: dict, general: dict, grpo: dict | None) -> str:
    cols = ["base", "at_freeze", "isolated", "ungated", "routed"]
    lines = [
        "## On a real model: SmolLM2-135M-Instruct, five reasoning-gym families",
        "",
        f"Command: `python benchmarks/reproduce_real.py` at {meta['code']} ({meta['machine']}). "
        "Exact-match accuracy by each family's own `score_answer` on held-out items (chance 0), "
        "95% Wilson intervals, n per cell in the JSON.",
        "",
        "| domain | " + " | ".join(cols) + " |",
        "| --- | " + " | ".join("---" for _ in cols) + " |",
    ]
    for d, row in accuracy.items():
        lines.append(f"| {d} | " + " | ".join(_cell(row[c]) for c in cols) + " |")
    lines += ["", "Forgetting matrix in accuracy (row: after training that domain, stacks so far ungated):", ""]
    domains = list(forgetting)
    lines += ["| after | " + " | ".join(domains) + " |", "| --- | " + " | ".join("---" for _ in domains) + " |"]
    for after, row in forgetting.items():
        lines.append(f"| {after} | " + " | ".join(f"{row[d]['acc']:.2f}" if d in row else "" for d in domains) + " |")
    if routing:
        lines += [
            "",
            "Routing: share of each domain's evaluation prompts that got its own stack; "
            "capability gap on families never trained (answered by the base alone):",
            "",
        ]
        for d, row in accuracy.items():
            if row["routed"]:
                lines.append(
                    f"- {d}: own stack {row['routed']['route_share'].get(d, 0):.2f}, "
                    f"gap {row['routed']['capability_gap']:.2f}"
                )
        for name, row in routing.items():
            lines.append(
                f"- unseen {name}: gap {row['capability_gap']:.2f}; base {_cell(row['base'])}, "
                f"routed {_cell(row['routed'])}"
            )
    lines += [
        "",
        f"General chat prompts ({general['prompts']}, greedy, {general['max_new_tokens']} tokens): "
        "share answered exactly as the base answers: "
        + ", ".join(
            f"{mode} {general[mode]['exact_agreement']:.2f}" for mode in ("ungated", "routed") if mode in general
        ),
    ]
    if grpo:
        lines += [
            "",
            f"GRPO on {GRPO_DOMAIN} (served configuration, routed): {_cell(grpo['before'])} -> "
            f"{_cell(grpo['after'])}; the GRPO stack alone with the SFT one: {_cell(grpo['after_domain_stacks'])}",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=REPO / "runs" / "smollm2", help="run directory (SFT + router)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "real")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--batch_size", type=int, default=16, help="evaluation batch size")
    p.add_argument("--skip_grpo", action="store_true", help="measure without the GRPO phase")
    p.add_argument(
        "--summary_only", action="store_true", help="rewrite summary.md and RESULTS.md from the JSON in --out"
    )
    a = p.parse_args(argv)
    if a.summary_only:
        return write_summary(a.out)
    torch.set_num_threads(a.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    seconds = {"sft": fit(CONFIGS / "smollm2_sft.yaml", a.run), "router": fit(CONFIGS / "smollm2_router.yaml", a.run)}
    code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "brainstacks_pl", "configs", "benchmarks/reproduce_real.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    meta = {
        "code": code.strip() + (" + uncommitted edits" if dirty else ""),
        "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "run": str(a.run),
    }
    tasks = {t.domain: t for t in resolve_tasks(str(CONFIGS / "smollm2_tasks"))}
    unseen = resolve_tasks(str(CONFIGS / "smollm2_tasks" / "unseen"))
    prompts = [json.loads(line)["prompt"] for line in (REPO / "benchmarks/data/general_prompts.jsonl").open()]

    m = Measure(a.run, a.batch_size)
    start = time.perf_counter()
    accuracy, forgetting = per_domain(m, tasks)
    routing = unseen_families(m, unseen) if m.gen.router is not None else {}
    general = general_ability(m, prompts, 48)
    seconds["evaluation"] = round(time.perf_counter() - start, 1)
    sft_record = json.loads((a.run / "forgetting_matrix.json").read_text())
    write_report({**meta, "seconds": seconds, "per_domain": accuracy}, a.out / "accuracy.json")
    write_report({**meta, "accuracy": forgetting, "loss": sft_record}, a.out / "forgetting.json")
    write_report({**meta, "unseen_families": routing}, a.out / "routing.json")
    write_report({**meta, **general}, a.out / "general.json")

    grpo = None
    if not a.skip_grpo and m.gen.router is not None:
        grpo_run = a.run.with_name(a.run.name + "-grpo")
        if not grpo_run.exists():
            shutil.copytree(a.run, grpo_run, ignore=shutil.ignore_patterns("tensorboard", "*.lock", ".lock*"))
        seconds["grpo"] = fit(CONFIGS / "smollm2_grpo.yaml", grpo_run)
        after = Measure(grpo_run, a.batch_size)
        grpo = {
            "domain": GRPO_DOMAIN,
            "before": accuracy[GRPO_DOMAIN]["routed"],
            "after": after.accuracy(tasks[GRPO_DOMAIN], "routed"),
            "after_domain_stacks": after.accuracy(tasks[GRPO_DOMAIN], "ungated", [GRPO_DOMAIN]),
            "seconds": seconds["grpo"],
        }
        write_report({**meta, **grpo}, a.out / "grpo.json")
    write_summary(a.out)


def write_summary(out: Path) -> None:
    """``summary.md`` from the JSON files of ``out``, then RESULTS.md (``reproduce/collect.py``)."""
    read = {
        name: json.loads((out / f"{name}.json").read_text())
        for name in ("accuracy", "forgetting", "routing", "general")
    }
    grpo = json.loads((out / "grpo.json").read_text()) if (out / "grpo.json").is_file() else None
    meta = {k: read["accuracy"][k] for k in ("code", "machine")}
    text = summary(
        meta,
        read["accuracy"]["per_domain"],
        read["forgetting"]["accuracy"],
        read["routing"]["unseen_families"],
        read["general"],
        grpo,
    )
    (out / "summary.md").write_text(text)
    print(text)
    subprocess.run([sys.executable, str(REPO / "benchmarks/reproduce/collect.py")], check=True)  # RESULTS.md


if __name__ == "__main__":
    main()
