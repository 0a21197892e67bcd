"""How well the router's capability-gap signal separates in-domain from out-of-domain prompts.

    python benchmarks/gap_auroc.py --run runs/demo [--output benchmarks/results/gap_auroc.json]

In-domain: the demo's held-out evaluation prompts (``brainstacks evaluate --tasks demo``; kept
out of the training data). Out-of-domain: ``brainstacks_pl/data/demo/out_of_domain.jsonl``.
Prints, for the router's confidence ``max_d p_d`` and for the novelty score, the AUROC and the
threshold with the best TPR - FPR, then what the served rule (gate + calibrated novelty
threshold) does on each set; writes everything (scores included) as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from brainstacks_pl.evaluation.tasks import load_examples, resolve_tasks
from brainstacks_pl.inference import RoutedGenerator
from brainstacks_pl.routing.gap import measure_gap, out_of_domain_prompts


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--tasks", default="demo")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    generator = RoutedGenerator.from_run(args.run, require_router=True)
    in_domain = list(dict.fromkeys(ex.prompt for task in resolve_tasks(args.tasks) for ex in load_examples(task)[1]))
    result = {
        "run": args.run,
        "in_domain_source": f"tasks {args.tasks}",
        "out_of_domain_source": "brainstacks_pl/data/demo/out_of_domain.jsonl",
        **measure_gap(generator, in_domain, out_of_domain_prompts()),
    }
    print(f"{result['n_in_domain']} in-domain vs {result['n_out_of_domain']} out-of-domain prompts")
    for name in ("confidence", "novelty"):
        if name in result:
            best = result[name]["best_threshold"]
            print(
                f"{name:>10}: AUROC {result[name]['auroc']:.3f}; best threshold {abs(best['gate']):.3f} "
                f"(TPR {best['tpr']:.0%}, FPR {best['fpr']:.0%})"
            )
    served = result["served"]
    novelty = f", novelty > {result['gap_threshold']:.3f}" if "gap_threshold" in result else ""
    print(
        f"as served (gate {result['gate']:.2f}{novelty}): {served['in_domain_passes']:.0%} of in-domain prompts "
        f"keep their stacks, the gap fires on {served['out_of_domain_fires']:.0%} of out-of-domain prompts"
    )
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
