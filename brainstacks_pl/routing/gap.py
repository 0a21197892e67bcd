"""Does the capability-gap signal separate in-domain from out-of-domain prompts?

Two scores can fire the gap: the router's confidence ``max_d p_d`` (the gate: no domain
reaches it) and the prompt's novelty (``routing/novelty.py``: its distance to the nearest
domain's features, above the calibrated threshold). On a held-out set of in-domain prompts
and one of out-of-domain prompts, the AUROC of each score says how well any threshold on it
separates them (0.5: not at all; in-domain counts as positive: high confidence, low novelty),
``best_gate`` the threshold that separates them best (Youden's J = TPR - FPR), and the rule as
served (gate and novelty together) what it does on each set. ``benchmarks/gap_auroc.py`` runs
it on a run directory with the demo's held-out evaluation prompts and
``data/demo/out_of_domain.jsonl``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["OUT_OF_DOMAIN_PROMPTS", "auroc", "best_gate", "measure_gap", "out_of_domain_prompts"]

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


def _decide(generator, prompts: Sequence[str], batch_size: int = 16) -> list:
    decisions = []
    for start in range(0, len(prompts), batch_size):
        decisions += generator.route(list(prompts[start : start + batch_size]))
    return decisions


def measure_gap(generator, in_domain: Sequence[str], out_of_domain: Sequence[str]) -> dict[str, Any]:
    """Per score (confidence, novelty): AUROC and best threshold; the served rule's rates on both sets."""
    pos, neg = _decide(generator, in_domain), _decide(generator, out_of_domain)
    result: dict[str, Any] = {"n_in_domain": len(pos), "n_out_of_domain": len(neg), "gate": generator.gate_threshold}
    scores = {"confidence": lambda d: max(d.probs.values())}
    if all(d.novelty is not None for d in pos + neg):
        scores["novelty"] = lambda d: -d.novelty  # in-domain is the positive class: low novelty scores high
        result["gap_threshold"] = generator.spec.gap_threshold
    for name, score in scores.items():
        p, n = [score(d) for d in pos], [score(d) for d in neg]
        result[name] = {"auroc": auroc(p, n), "best_threshold": best_gate(p, n), "in_domain": p, "out_of_domain": n}
    result["served"] = {
        "in_domain_passes": sum(not d.capability_gap for d in pos) / len(pos),
        "out_of_domain_fires": sum(d.capability_gap for d in neg) / len(neg),
    }
    return result
