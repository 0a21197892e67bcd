r"""MoE-LoRA (4 experts x r16, top-2) vs a parameter-matched LoRA (1 expert, r64) per step.

Paper: MoE-LoRA reaches the single LoRA's final loss at ~0.4 of the steps ("2.5x faster
convergence"). Each arm is a one-domain, one-round ``brainstacks fit``; the validation loss
after every epoch (``limit_train_batches`` steps) is the per-step curve (manifest
``val_losses``). Early stopping is off so both curves cover every step. An arm is compared at
its own best learning rate (a small sweep): one shared lr favours whichever arm it happens to
suit, e.g. top-2 gating halves each expert's share of the update, so MoE-LoRA may want a
larger lr. The best lr of each arm is then rerun with more seeds (stack init and gating
noise; the data order and the validation set stay fixed).

    python benchmarks/reproduce/moe_vs_lora.py                      # demo, chat, ~20 min on 2 cores
    python benchmarks/reproduce/moe_vs_lora.py --tag long --epochs 30 --lrs 0.004 --seeds 1   # 240 steps, ~8 min
    python benchmarks/reproduce/moe_vs_lora.py --config configs/tinyllama_nf4.yaml \
        --lrs 1e-4 2e-4 4e-4 --epochs 8 --batches 200
"""

from __future__ import annotations

import statistics

from common import (
    LR_FLAG,
    Bench,
    add_training_flags,
    curve,
    domains_flag,
    fmt,
    parser,
    read_manifest,
    training_overrides,
)

ARMS = {
    "moe": ("MoE-LoRA 4 x r16 top-2", []),
    "lora": (
        "LoRA r64 (1 expert)",
        [
            "--model.init_args.stack.experts",
            "1",
            "--model.init_args.stack.rank",
            "64",
            "--model.init_args.stack.top_k",
            "1",
            "--model.init_args.stack.noise",
            "false",
        ],
    ),
}
# Why does one arm win? Each ablation changes one thing of an arm, at that arm's best lr, seed 0.
ABLATIONS = {
    "moe_nonoise": ("moe", "MoE-LoRA without gating noise", ["--model.init_args.stack.noise", "false"]),
    "lora_alpha_over_r": (
        "lora",
        "LoRA r64 scaled alpha/r = 0.25 (plain LoRA) instead of rsLoRA alpha/sqrt(r) = 2",
        ["--model.init_args.stack.rslora", "false"],
    ),
}


def train_arm(bench: Bench, arm: str, lr: float, seed: int, ablation: str | None = None) -> list[tuple[int, float]]:
    a = bench.args
    extra = ABLATIONS[ablation][2] if ablation else []
    overrides = [
        *domains_flag(a.config, a.domains),
        *ARMS[arm][1],
        *extra,
        LR_FLAG,
        str(lr),
        "--seed_everything",
        str(seed),
        "--model.init_args.seed",
        str(seed),
        *training_overrides(a),
        "--boosting.max_rounds",
        "1",
        "--best_stack.patience",
        "100000",
        "--best_stack.spike_threshold",
        "1e9",
    ]
    run = bench.fit(f"{ablation or arm}-lr{lr:g}-s{seed}", overrides)
    return [] if bench.dry else curve(read_manifest(run)["stacks"][0])


def first_reaching(points: list[tuple[int, float]], target: float) -> int | None:
    return next((step for step, loss in points if loss <= target), None)


def main() -> None:
    p = parser(__doc__)
    p.add_argument(
        "--lrs", type=float, nargs="+", default=[2e-3, 4e-3, 8e-3], help="learning rates swept per arm (seed 0)"
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds at each arm's best lr (seed 0 is the sweep's run)")
    p.add_argument(
        "--ablations",
        nargs="*",
        default=list(ABLATIONS),
        choices=list(ABLATIONS),
        help="one-change variants at the arm's best lr",
    )
    add_training_flags(p, epochs=15, batches=8, rounds=None)
    bench = Bench("moe_vs_lora", p.parse_args())
    a = bench.args
    sweep = {arm: {lr: train_arm(bench, arm, lr, 0) for lr in a.lrs} for arm in ARMS}
    if bench.dry:
        return
    best_lr = {arm: min(curves, key=lambda lr: curves[lr][-1][1]) for arm, curves in sweep.items()}
    seeds = {
        arm: [sweep[arm][best_lr[arm]]] + [train_arm(bench, arm, best_lr[arm], s) for s in range(1, a.seeds)]
        for arm in ARMS
    }
    ablations = {
        name: train_arm(bench, ABLATIONS[name][0], best_lr[ABLATIONS[name][0]], 0, name) for name in a.ablations
    }
    total = a.epochs * a.batches
    per_seed = []
    for moe, lora in zip(seeds["moe"], seeds["lora"]):
        reach = first_reaching(moe, lora[-1][1])
        back = first_reaching(lora, moe[-1][1])
        per_seed.append(
            {
                "moe_final": moe[-1][1],
                "lora_final": lora[-1][1],
                "moe_reaches_lora_final_at": reach,
                "lora_reaches_moe_final_at": back,
            }
        )
    mean = {arm: statistics.mean(c[-1][1] for c in seeds[arm]) for arm in ARMS}
    sd = {arm: statistics.stdev(c[-1][1] for c in seeds[arm]) if len(seeds[arm]) > 1 else 0.0 for arm in ARMS}
    fractions = [s["moe_reaches_lora_final_at"] / total for s in per_seed if s["moe_reaches_lora_final_at"] is not None]
    result = {
        "paper": "MoE-LoRA reaches the parameter-matched LoRA's final loss at ~0.4 of the steps (2.5x faster)",
        "setting": {"domains": a.domains, "steps": total, "eval_every": a.batches, "lrs": a.lrs, "seeds": a.seeds},
        "sweep_final_loss": {arm: {str(lr): c[-1][1] for lr, c in curves.items()} for arm, curves in sweep.items()},
        "best_lr": best_lr,
        "curves_at_best_lr": seeds,
        "per_seed": per_seed,
        "final_mean": mean,
        "final_sd": sd,
        "moe_reaches_lora_final_fraction": fractions,
        "ablations": {
            name: {"what": ABLATIONS[name][1], "lr": best_lr[ABLATIONS[name][0]], "curve": c, "final": c[-1][1]}
            for name, c in ablations.items()
        },
        "reproduced": len(fractions) == len(per_seed) and statistics.mean(fractions) <= 0.5,
    }
    rows = ["| lr | " + " | ".join(f"{ARMS[arm][0]} final val loss" for arm in ARMS) + " |", "|---|---|---|"]
    rows += [f"| {lr:g} | " + " | ".join(fmt(sweep[arm][lr][-1][1]) for arm in ARMS) + " |" for lr in a.lrs]
    ablation_rows = [
        "| one change, at the arm's best lr, seed 0 | final val loss | vs the arm itself (seed 0) "
        "| MoE side reaches the LoRA side's final at |",
        "|---|---|---|---|",
    ]
    for n, c in ablations.items():
        arm = ABLATIONS[n][0]
        moe_side, lora_side = (c, seeds["lora"][0]) if arm == "moe" else (seeds["moe"][0], c)
        reach = first_reaching(moe_side, lora_side[-1][1])
        result["ablations"][n]["moe_side_reaches_lora_side_final_at"] = reach
        where = "never" if reach is None else f"step {reach} ({reach / total:.2f} of the steps)"
        ablation_rows.append(
            f"| {ABLATIONS[n][1]} | {fmt(c[-1][1])} | {c[-1][1] - seeds[arm][0][-1][1]:+.4f} | {where} |"
        )
    steps = [s for s, _ in seeds["moe"][0]]
    curve_rows = [
        f"| step | MoE-LoRA (lr {best_lr['moe']:g}, seed 0) | LoRA r64 (lr {best_lr['lora']:g}, seed 0) |",
        "|---|---|---|",
    ]
    curve_rows += [
        f"| {s} | {fmt(moe)} | {fmt(lora)} |"
        for s, (_, moe), (_, lora) in zip(steps, seeds["moe"][0], seeds["lora"][0])
    ]
    explain = []
    if "moe_nonoise" in ablations:
        gap, quiet = (
            seeds["moe"][0][-1][1] - seeds["lora"][0][-1][1],
            ablations["moe_nonoise"][-1][1] - seeds["lora"][0][-1][1],
        )
        share = "most" if abs(quiet) < abs(gap) / 2 else "only part"
        explain.append(
            f"Switching the gating noise off moves MoE-LoRA from {gap:+.4f} to {quiet:+.4f} against the LoRA "
            f"after {total} steps (seed 0): {share} of the gap. "
            "The noise (softplus(W_n x) * eps, W_n = 0 at init: std ~0.69, "
            "larger than the spread of router logits that start near 0, "
            "W_r ~ N(0, 0.02)) plausibly makes the top-2 choice close to random per token early on, "
            "so each expert's gradient is noisy"
            + (
                "."
                if share == "most"
                else "; what remains is, our best explanation, that one small domain on a 1M-parameter base gives "
                "four rank-16 experts nothing to specialise on, "
                "so a top-2 mixture of them fits less than one rank-64 adapter."
            )
        )
    if "lora_alpha_over_r" in ablations:
        reach = result["ablations"]["lora_alpha_over_r"]["moe_side_reaches_lora_side_final_at"]
        explain.append(
            "Against a LoRA with plain alpha/r scaling "
            "(8x smaller output scale at the same lr, as a LoRA baseline without rsLoRA would have), "
            f"MoE-LoRA reaches the LoRA's final loss at {'never' if reach is None else f'{reach / total:.2f}'} "
            "of the steps: the paper's ~0.4 may depend on how its LoRA baseline was scaled "
            "(we have not verified how the paper scaled it)."
        )
    result["verdict"] = (
        f"{'reproduced' if result['reproduced'] else '**not reproduced**'}: "
        f"final loss MoE-LoRA {mean['moe']:.4f} vs LoRA {mean['lora']:.4f} "
        f"at each arm's best lr ({a.seeds} seeds)"
        + (
            f"; without gating noise MoE-LoRA {ablations['moe_nonoise'][-1][1]:.4f} "
            f"vs LoRA {seeds['lora'][0][-1][1]:.4f} (seed 0)"
            if "moe_nonoise" in ablations
            else ""
        )
    )
    verdict = (
        f"MoE-LoRA reaches the LoRA's final loss at {statistics.mean(fractions):.2f} of the steps "
        f"(mean over {len(fractions)} seed(s) where it does)."
        if fractions
        else "MoE-LoRA never reaches the LoRA's final loss within the steps: **not reproduced**."
    )
    finals = [
        (
            round(s["moe_final"], 4),
            round(s["lora_final"], 4),
            s["moe_reaches_lora_final_at"],
            s["lora_reaches_moe_final_at"],
        )
        for s in per_seed
    ]
    body = f"""
Setting: domain(s) {a.domains}, {total} steps, validation every {a.batches} steps, each arm at its own best
lr of {a.lrs} (seed 0), then {a.seeds} seed(s) at that lr. Paper: {result["paper"]} (TinyLlama-1.1B / Gemma-3-12B).

{chr(10).join(rows)}

Final validation loss at the best lr over {a.seeds} seed(s): MoE-LoRA {mean["moe"]:.4f} +- {sd["moe"]:.4f},
LoRA r64 {mean["lora"]:.4f} +- {sd["lora"]:.4f}. Per seed (MoE final, LoRA final, step MoE reaches LoRA's final,
step LoRA reaches MoE's final): {finals}.

{verdict}

{chr(10).join(ablation_rows)}

{chr(10).join(explain)}

{chr(10).join(curve_rows)}
"""
    bench.write(result, "MoE-LoRA vs parameter-matched LoRA (convergence per step)", body)


if __name__ == "__main__":
    main()
