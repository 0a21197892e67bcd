r"""Routed vs ungated vs base-only validation loss per domain, and the routing report.

Paper: ungated stack accumulation (every stack on) destroys quality that the outcome-based
sigmoid meta-router recovers by switching on only the stacks that help; the routing report
shows medical prompts routed to chat+math in 97% of cases. Here: ``brainstacks fit`` of the
whole curriculum, then ``brainstacks fit --config configs/router_demo.yaml`` on the same run
directory (outcome discovery + router training, docs/router.md), then per domain the mean
validation answer loss with the router's weights (routed), with every stack at 1.0 (ungated)
and with no stack (base), and the routing report the router phase wrote (oracle routes found
by discovery vs the router's, on the validation prompts).

    python benchmarks/reproduce/routing.py                  # 5 demo domains + router, ~10 min on 2 cores
    python benchmarks/reproduce/routing.py --config configs/tinyllama_nf4.yaml --router_config ROUTER.yaml \
        --epochs 8 --batches 200
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from common import REPO, Bench, add_training_flags, config_domains, domains_flag, fmt, parser, training_overrides

from brainstacks_pl.data.curriculum import CurriculumDataModule, DomainConfig, encode_examples
from brainstacks_pl.inference import RoutedGenerator
from brainstacks_pl.losses import per_sample_lm_loss
from brainstacks_pl.routing.features import pad_right
from brainstacks_pl.storage import Manifest

MODES = ("routed", "ungated", "base")


def run_losses(run_dir: Path, domains: list[DomainConfig], limit: int, max_seq_len: int) -> dict[str, dict[str, float]]:
    """Per domain, mean validation answer loss routed vs ungated vs base only, on the same padded batch,
    and how many of its prompts the capability gap fired on (routed: answered by the base alone)."""
    generator = RoutedGenerator.from_run(run_dir, require_router=True)
    stacks = generator.stacks
    data = CurriculumDataModule(
        [d for d in domains if d.name in generator.router_domains],
        tokenizer=Manifest.load(run_dir).base_model_id,
        max_seq_len=max_seq_len,
    )
    generator.load_domains(stacks.domains)
    out = {}
    for domain in generator.router_domains:
        examples = data.examples(domain, "val")[:limit]
        encoded = encode_examples(generator.tokenizer, examples, max_seq_len, generator.template)
        ids, mask = pad_right([encoded.item(i)[0].tolist() for i in range(len(encoded))], generator._pad_id)
        labels, _ = pad_right([encoded.item(i)[1].tolist() for i in range(len(encoded))], -100)
        decisions = generator.route([e.prompt for e in examples])
        weights = generator.weight_matrix(decisions)
        row = {"n": len(examples), "gaps": sum(d.capability_gap for d in decisions)}
        for mode, scope in zip(MODES, (stacks.routed(weights), stacks.ungated(), stacks.base_only())):
            with torch.no_grad(), scope:
                sums, counts = per_sample_lm_loss(stacks(ids, mask).logits, labels)
            row[mode] = float(sums.sum() / counts.sum())
        out[domain] = row
    return out


def report_table(report: dict) -> str:
    lines = ["| source domain | n | oracle routes (discovery) | router routes | agreement |", "|---|---|---|---|---|"]

    def share(routes: dict) -> str:
        return ", ".join(f"{name} {p:.0%}" for name, p in sorted(routes.items(), key=lambda kv: -kv[1]))

    for source, entry in report["per_source"].items():
        lines.append(
            f"| {source} | {entry['n']} | {share(entry.get('oracle', {}))} | {share(entry.get('router', {}))} "
            f"| {fmt(entry.get('agreement'), 3)} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = parser(__doc__, domains=["chat", "code", "math", "medical", "reasoning"])
    p.add_argument(
        "--router_config", type=Path, default=REPO / "configs" / "router_demo.yaml", help="the router phase's config"
    )
    add_training_flags(p, epochs=4, batches=16)
    p.add_argument(
        "--router_epochs", type=int, default=None, help="router --trainer.max_epochs (default: the router config's)"
    )
    p.add_argument("--examples", type=int, default=32, help="validation examples per domain in the loss comparison")
    bench = Bench("routing", p.parse_args())
    a = bench.args
    domains = domains_flag(a.config, a.domains)
    run = bench.fit("run", [*domains, *training_overrides(a)])
    bench.fit(
        "run",
        [*domains, *(["--trainer.max_epochs", str(a.router_epochs)] if a.router_epochs else [])],
        config=a.router_config,
        fresh=False,
        done_if="router/router.safetensors",
    )
    if bench.dry:
        return
    entries = [DomainConfig(**d) for d in config_domains(a.config)]
    max_seq_len = int(yaml.safe_load(a.config.read_text())["data"]["init_args"].get("max_seq_len", 192))
    losses = run_losses(run, entries, a.examples, max_seq_len)
    report = json.loads((run / "router" / "routing_report.json").read_text())
    mean = {m: sum(r[m] for r in losses.values()) / len(losses) for m in MODES}  # over domains
    result = {
        "paper": "the routed system recovers the quality ungated stack accumulation destroys; "
        "medical prompts route to chat+math in 97% of cases (Gemma-3-12B)",
        "setting": {
            "domains": a.domains,
            "epochs": a.epochs,
            "batches": a.batches,
            "rounds": a.rounds,
            "examples_per_domain": a.examples,
        },
        "losses": losses,
        "mean": mean,
        "routing_report": report,
        "routed_beats_ungated": {d: r["routed"] < r["ungated"] for d, r in losses.items()},
    }
    result["verdict"] = (
        f"{'reproduced' if mean['routed'] < mean['ungated'] else '**not reproduced**'}: "
        f"mean loss routed {mean['routed']:.3f}, "
        f"ungated {mean['ungated']:.3f}, base {mean['base']:.3f}"
    )
    rows = ["| domain | routed | ungated | base only | best | capability gap (routed) |", "|---|---|---|---|---|---|"]
    rows += [
        f"| {d} | {fmt(r['routed'])} | {fmt(r['ungated'])} | {fmt(r['base'])} | {min(MODES, key=r.get)} "
        f"| {r['gaps']} of {r['n']} |"
        for d, r in losses.items()
    ]
    gaps, n = sum(r["gaps"] for r in losses.values()), sum(r["n"] for r in losses.values())
    rows.append(
        f"| **mean** | {fmt(mean['routed'])} | {fmt(mean['ungated'])} | {fmt(mean['base'])} "
        f"| {min(MODES, key=mean.get)} | {gaps} of {n} |"
    )
    wins = sum(result["routed_beats_ungated"].values())
    losers = [d for d, better in result["routed_beats_ungated"].items() if not better]
    exceptions = (
        f"Ungated is lower on {', '.join(losers)}: "
        "where the router already switches on every stack (see the report), "
        "routed differs from ungated only by weights below 1."
        if losers
        else ""
    )
    medical = report["per_source"].get("medical", {}).get("router", {})
    with_chat_math = sum(p for route, p in medical.items() if {"chat", "math"} <= set(route.split("+")))
    result["medical_routes_with_chat_and_math"] = with_chat_math if medical else None
    medical_line = (
        f"Medical validation prompts whose route includes chat and math: {with_chat_math:.0%} "
        "(paper: 97% routed to chat+math; "
        f"here the medical stack itself is usually in the route too, see the table)."
        if medical
        else ""
    )
    router_config = a.router_config.relative_to(REPO) if a.router_config.is_relative_to(REPO) else a.router_config
    body = f"""
Setting: domains {a.domains}, {a.rounds} round(s) of {a.epochs} epochs x {a.batches} steps per domain, \
then the router phase
(`{router_config}`); losses on the first {a.examples} validation examples per domain.
Paper: {result["paper"]}.

Validation answer loss (lower is better):

{chr(10).join(rows)}

Routed beats ungated on {wins} of {len(losses)} domains. The capability gap (docs/router.md) fired on \
{gaps} of {n} of these prompts: routed, they are answered by the base alone (its loss), which raises the routed \
mean. The detector is calibrated to fire on at most 5% of all the router's validation prompts (these are among \
them); per domain the share differs (the table's last column). \
Routing report \
(validation prompts; a route is the set of domains with p >= 0.5):

{report_table(report)}

{medical_line}
Where ours differs: the demo's stacks are trained for {a.epochs} x {a.batches} steps each on small synthetic domains and
the numbers are losses, not the paper's generation scores. {exceptions}
"""
    bench.write(result, "Routed vs ungated vs base, and the routing report", body)


if __name__ == "__main__":
    main()
