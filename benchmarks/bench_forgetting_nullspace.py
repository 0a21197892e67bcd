"""Forgetting with and without null-space projection (the paper's Table 3 comparison), side by side.

Runs ``brainstacks fit`` (through ``cli_main``) on the demo config three times, with
``--null_space.mode off``, ``delta`` and ``weight``, into separate run directories, then writes:

* the ungated forgetting matrices (rows: after domain X; columns: validation loss of domain Y
  with every stack trained so far on) next to each other;
* per domain, the loss when it finished (as frozen: its own and earlier stacks) and the rise
  of its ungated loss by the end of the curriculum (later domains' stacks switched on);
* which of weight / delta trains better, by the domains' losses when they finished.

    python benchmarks/bench_forgetting_nullspace.py                      # 3 demo domains, ~5 min on 2 cores
    python benchmarks/bench_forgetting_nullspace.py --domains chat code math medical reasoning --epochs 6

Results: benchmarks/results/forgetting_nullspace.json and .md. One seed, a tiny base: the
numbers show what the modes do on this setting, not a general ranking.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from brainstacks_pl.cli import cli_main

REPO = Path(__file__).resolve().parents[1]
MODES = ("off", "delta", "weight")


def run_mode(mode: str, run_dir: Path, args: argparse.Namespace) -> float:
    if run_dir.exists() and not args.reuse:
        shutil.rmtree(run_dir)
    domains = "[" + ", ".join(f'{{name: {d}, path: "demo:{d}"}}' for d in args.domains) + "]"
    started = time.monotonic()
    cli_main([
        "fit", "--config", str(REPO / "configs" / "demo.yaml"),
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.max_epochs", str(args.epochs),
        "--trainer.limit_train_batches", str(args.batches),
        "--trainer.enable_progress_bar", "false",
        "--boosting.max_rounds", str(args.rounds),
        f"--data.domains={domains}",
        "--null_space.mode", mode,
        "--null_space.k", str(args.k),
    ])
    return time.monotonic() - started


def summarise(run_dirs: dict[str, Path], seconds: dict[str, float]) -> dict:
    out = {"modes": {}}
    for mode, run_dir in run_dirs.items():
        data = json.loads((run_dir / "forgetting_matrix.json").read_text())
        domains, rows = data["domains"], data["rows"]
        final = rows[-1]["ungated"]
        entry = {
            "seconds": round(seconds.get(mode, float("nan")), 1),
            "ungated": {row["after"]: row["ungated"] for row in rows},
            "at_freeze": data["at_freeze"],
            "final_ungated": final,
            "forgetting": {d: final[d] - data["at_freeze"][d] for d in domains},
        }
        entry["mean_at_freeze"] = sum(data["at_freeze"].values()) / len(domains)
        entry["mean_final_ungated"] = sum(final.values()) / len(domains)
        entry["mean_forgetting"] = sum(entry["forgetting"].values()) / len(domains)
        null_space = run_dir / "null_space"
        entry["null_space"] = {p.stem: {k: json.loads(p.read_text()).get(k) for k in ("rows", "leak")} for p in sorted(null_space.glob("*.json"))} if null_space.is_dir() else {}
        out["modes"][mode] = entry
        out["domains"] = domains
    weight, delta = out["modes"].get("weight"), out["modes"].get("delta")
    if weight and delta:
        later = out["domains"][1:]  # the first domain has no null space: identical in every mode
        w = sum(weight["at_freeze"][d] for d in later) / max(len(later), 1)
        d_ = sum(delta["at_freeze"][d] for d in later) / max(len(later), 1)
        out["weight_vs_delta"] = {
            "mean_at_freeze_projected_domains": {"weight": w, "delta": d_},
            "trains_better": "weight" if w < d_ else "delta" if d_ < w else "tie",
            "difference": abs(w - d_),
        }
    return out


def to_markdown(summary: dict) -> str:
    domains = summary["domains"]
    lines = ["# Forgetting with null-space projection (ungated validation loss)", ""]
    lines.append("Rows: after training domain X; columns: validation loss of domain Y with every stack trained so far on.")
    lines.append("")
    header = "| after | " + " | ".join(f"{d} ({m})" for d in domains for m in summary["modes"]) + " |"
    lines += [header, "|---" * (1 + len(domains) * len(summary["modes"])) + "|"]
    for after in domains:
        cells = []
        for d in domains:
            for mode, entry in summary["modes"].items():
                loss = entry["ungated"].get(after, {}).get(d)
                cells.append("" if loss is None else f"{loss:.4f}")
        lines.append(f"| {after} | " + " | ".join(cells) + " |")
    lines += ["", "| mode | " + " | ".join(f"{d} at freeze" for d in domains) + " | " + " | ".join(f"{d} forgetting" for d in domains) + " | mean forgetting | seconds |"]
    lines.append("|---" * (3 + 2 * len(domains)) + "|")
    for mode, entry in summary["modes"].items():
        cells = [f"{entry['at_freeze'][d]:.4f}" for d in domains] + [f"{entry['forgetting'][d]:+.4f}" for d in domains]
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {entry['mean_forgetting']:+.4f} | {entry['seconds']} |")
    if "weight_vs_delta" in summary:
        cmp = summary["weight_vs_delta"]
        lines += ["", f"Mean loss at freeze of the projected domains: weight {cmp['mean_at_freeze_projected_domains']['weight']:.4f}, "
                  f"delta {cmp['mean_at_freeze_projected_domains']['delta']:.4f} -> **{cmp['trains_better']}** lower by {cmp['difference']:.4f} (one seed)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", nargs="+", default=["chat", "code", "math"], help="demo domains, in curriculum order")
    parser.add_argument("--epochs", type=int, default=3, help="--trainer.max_epochs per round")
    parser.add_argument("--batches", type=int, default=8, help="--trainer.limit_train_batches")
    parser.add_argument("--rounds", type=int, default=1, help="--boosting.max_rounds")
    parser.add_argument("--k", type=int, default=16, help="--null_space.k")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bench_forgetting_nullspace", help="parent of the three run directories")
    parser.add_argument("--reuse", action="store_true", help="resume / reuse existing run directories instead of starting afresh")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "forgetting_nullspace.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_dirs, seconds = {}, {}
    for mode in args.modes:
        run_dirs[mode] = args.runs / mode
        seconds[mode] = run_mode(mode, run_dirs[mode], args)
    summary = summarise(run_dirs, seconds)
    summary["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    markdown = to_markdown(summary)
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
