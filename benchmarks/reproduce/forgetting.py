r"""The forgetting matrix with and without null-space projection (the paper's Table 3), side by side.

Paper (Table 3): with null-space projection, domains evaluated in isolation show zero
forgetting, and the projection lowers the interference that later domains' stacks cause when
every stack is on (ungated). One ``brainstacks fit`` per ``--null_space.mode`` (``off``: no
projection; ``delta``: the paper's forward-pass projection, folded into the weights at freeze;
``weight``: ours, B projected after every optimizer step), on the same curriculum, then per
mode: the ungated matrix (rows: after domain X; columns: domain Y with every stack so far on),
each domain's loss when it finished (as frozen) and its rise by the end of the curriculum
(ungated), and which of weight / delta trains the projected domains better.

    python benchmarks/reproduce/forgetting.py                                   # 3 demo domains, ~6 min on 2 cores
    python benchmarks/reproduce/forgetting.py --config configs/tinyllama_nf4.yaml \
        --domains chat code math medical --epochs 8 --batches 200
"""

from __future__ import annotations

import statistics

from common import Bench, add_training_flags, domains_flag, fmt, parser, read_forgetting, training_overrides

MODES = ("off", "delta", "weight")


def summarise(forgetting: dict) -> dict:
    domains, rows = forgetting["domains"], forgetting["rows"]
    final = rows[-1]["ungated"]
    rise = {d: final[d] - forgetting["at_freeze"][d] for d in domains}
    return {
        "ungated": {row["after"]: row["ungated"] for row in rows},
        "isolated_final": rows[-1]["isolated"],
        "at_freeze": forgetting["at_freeze"],
        "final_ungated": final,
        "forgetting": rise,
        "mean_forgetting": statistics.mean(rise.values()),
        "mean_at_freeze_projected": statistics.mean(forgetting["at_freeze"][d] for d in domains[1:])
        if len(domains) > 1
        else None,
    }


def to_markdown(modes: dict[str, dict], domains: list[str]) -> str:
    header = "| after | " + " | ".join(f"{d} ({m})" for d in domains for m in modes) + " |"
    lines = [header, "|---" * (1 + len(domains) * len(modes)) + "|"]
    for after in domains:
        cells = [
            fmt(modes[m]["ungated"].get(after, {}).get(d)) if d in modes[m]["ungated"].get(after, {}) else ""
            for d in domains
            for m in modes
        ]
        lines.append(f"| {after} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| mode | "
        + " | ".join(f"{d} at freeze" for d in domains)
        + " | "
        + " | ".join(f"{d} rise (ungated, end)" for d in domains)
        + " | mean rise |",
    ]
    lines.append("|---" * (2 + 2 * len(domains)) + "|")
    for mode, s in modes.items():
        cells = [fmt(s["at_freeze"][d]) for d in domains] + [f"{s['forgetting'][d]:+.4f}" for d in domains]
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {s['mean_forgetting']:+.4f} |")
    return "\n".join(lines)


def main() -> None:
    p = parser(__doc__, domains=["chat", "code", "math"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    add_training_flags(p, epochs=3, batches=8)
    p.add_argument("--k", type=int, default=None, help="--null_space.k (default: the config's)")
    bench = Bench("forgetting", p.parse_args())
    a = bench.args
    runs = {}
    for mode in a.modes:
        overrides = [
            *domains_flag(a.config, a.domains),
            *training_overrides(a),
            "--null_space.mode",
            mode,
            *(["--null_space.k", str(a.k)] if a.k else []),
        ]
        runs[mode] = bench.fit(mode, overrides)
    if bench.dry:
        return
    modes = {mode: summarise(read_forgetting(run)) for mode, run in runs.items()}
    domains = read_forgetting(runs[a.modes[0]])["domains"]
    result = {
        "paper": "Table 3: null-space projection gives zero forgetting in isolation "
        "and less ungated interference than no projection",
        "setting": {"domains": domains, "epochs": a.epochs, "batches": a.batches, "rounds": a.rounds, "k": a.k},
        "modes": modes,
    }
    verdict = []
    if "off" in modes:
        for mode in (m for m in modes if m != "off"):
            less = modes[mode]["mean_forgetting"] < modes["off"]["mean_forgetting"]
            verdict.append(
                f"`{mode}` {'lowers' if less else 'does not lower'} the mean ungated rise vs `off` "
                f"({modes[mode]['mean_forgetting']:+.4f} vs {modes['off']['mean_forgetting']:+.4f})."
            )
    if "weight" in modes and "delta" in modes and len(domains) > 1:
        w, d = modes["weight"]["mean_at_freeze_projected"], modes["delta"]["mean_at_freeze_projected"]
        result["weight_vs_delta"] = {"weight": w, "delta": d, "trains_better": "weight" if w < d else "delta"}
        verdict.append(
            f"Mean loss at freeze of the projected domains ({', '.join(domains[1:])}): weight {w:.4f}, delta {d:.4f}: "
            f"**{result['weight_vs_delta']['trains_better']}** trains them better (one seed)."
        )
    if "off" in modes:
        projected = {m: modes[m]["mean_forgetting"] for m in modes if m != "off"}
        lower = all(v < modes["off"]["mean_forgetting"] for v in projected.values())
        result["verdict"] = (
            f"{'direction reproduced' if lower else '**not reproduced**'}: "
            f"mean ungated rise off {modes['off']['mean_forgetting']:+.3f}, "
            + ", ".join(f"{m} {v:+.3f}" for m, v in projected.items())
            + "; as frozen: 0"
        )
    body = f"""
Setting: domains {domains} in order, {a.rounds} round(s) of {a.epochs} epochs x {a.batches} steps each, one seed.
Paper: {result["paper"]}. Ungated validation loss: rows = after training domain X, \
columns = domain Y with every stack so far on.
"Rise" = final ungated loss minus the loss when the domain finished (its own and earlier stacks only).

{to_markdown(modes, domains)}

{chr(10).join(verdict)}
As frozen (each domain with exactly the stacks it was trained with) the rise is exactly 0 in every mode, since
frozen stacks never change: see zero_forgetting. The ungated rise is the interference of later stacks switched on.

Where ours differs: the paper's per-cell numbers (real data, 1B-12B bases) are not restated here; the claim checked
is the direction. The projection lowers the ungated rise only a little on the demo: it protects null_space.k directions
(the demo config: 16) of each projection's 64-352 output directions, and a later stack \
also disturbs earlier domains through
the hidden states it changes in later layers, which a per-layer output projection cannot stop (docs/nullspace.md).
"""
    bench.write(result, "Forgetting matrix with and without null-space projection (paper Table 3)", body)


if __name__ == "__main__":
    main()
