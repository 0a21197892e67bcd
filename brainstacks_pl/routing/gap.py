"""Does the capability-gap signal separate in-domain from out-of-domain prompts?

The router's gap fires when no domain reaches the gate: ``max_d p_d < gate``. Its score is
``max_d p_d``; on a held-out set of in-domain prompts (high is right) and one of out-of-domain
prompts (low is right) the AUROC says how well any gate can separate them (0.5: not at all),
and ``best_gate`` the gate that separates them best (Youden's J = TPR - FPR, where a true
positive is an in-domain prompt above the gate). ``benchmarks/gap_auroc.py`` runs it on a run
directory with the demo's held-out evaluation prompts and ``data/demo/out_of_domain.jsonl``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["OUT_OF_DOMAIN_PROMPTS", "auroc", "best_gate", "gap_scores", "measure_gap", "out_of_domain_prompts"]

OUT_OF_DOMAIN_PROMPTS = Path(__file__).resolve().parents[1] / "data" / "demo" / "out_of_domain.jsonl"
"""Capitals, translations, German, Japanese, history, poems...: none of the demo's five domains."""


def out_of_domain_prompts(path: str | Path = OUT_OF_DOMAIN_PROMPTS) -> list[str]:
    return [json.loads(line)["prompt"] for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """P(a positive scores above a negative), ties counted half (the Mann-Whitney U statistic)."""
    if not positive or not negative:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in positive for n in negative)
    return wins / (len(positive) * len(negative))


def best_gate(positive: Sequence[float], negative: Sequence[float]) -> dict[str, float]:
    """The gate maximising TPR - FPR (``score >= gate`` counts as in-domain), with both rates."""
    best = {"gate": float("nan"), "tpr": float("nan"), "fpr": float("nan"), "youden_j": -1.0}
    for gate in sorted(set(positive) | set(negative)):
        tpr = sum(p >= gate for p in positive) / len(positive)
        fpr = sum(n >= gate for n in negative) / len(negative)
        if tpr - fpr > best["youden_j"]:
            best = {"gate": gate, "tpr": tpr, "fpr": fpr, "youden_j": tpr - fpr}
    return best


def gap_scores(generator, prompts: Sequence[str], batch_size: int = 16) -> list[float]:
    """``max_d p_d`` of the run's router for each prompt."""
    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        scores += [max(d.probs.values()) for d in generator.route(list(prompts[start : start + batch_size]))]
    return scores


def measure_gap(generator, in_domain: Sequence[str], out_of_domain: Sequence[str]) -> dict[str, Any]:
    """AUROC of the gap score, the current gate's rates and the best gate, on the two sets."""
    pos, neg = gap_scores(generator, in_domain), gap_scores(generator, out_of_domain)
    gate = generator.gate_threshold
    return {
        "n_in_domain": len(pos),
        "n_out_of_domain": len(neg),
        "auroc": auroc(pos, neg),
        "gate": gate,
        "gate_in_domain_passes": sum(p >= gate for p in pos) / len(pos),
        "gate_out_of_domain_fires": sum(n < gate for n in neg) / len(neg),
        "best_gate": best_gate(pos, neg),
        "scores": {"in_domain": pos, "out_of_domain": neg},
    }
