"""How well the router's capability-gap signal separates in-domain from out-of-domain prompts.

    python benchmarks/gap_auroc.py --run runs/demo [--output benchmarks/results/gap_auroc.json]

In-domain: the demo's held-out evaluation prompts (``brainstacks evaluate --tasks demo``; kept
out of the training data). Out-of-domain: ``brainstacks_pl/data/demo/out_of_domain.jsonl``.
Prints the AUROC of ``max_d p_d``, what the current gate does on each set and the gate with the
best TPR - FPR; writes everything (scores included) as JSON.
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
    best = result["best_gate"]
    print(
        f"gap AUROC {result['auroc']:.3f} "
        f"({result['n_in_domain']} in-domain vs {result['n_out_of_domain']} out-of-domain prompts)"
    )
    print(
        f"gate {result['gate']:.2f}: {result['gate_in_domain_passes']:.0%} of in-domain prompts pass, "
        f"the gap fires on {result['gate_out_of_domain_fires']:.0%} of out-of-domain prompts"
    )
    print(f"best gate {best['gate']:.3f}: TPR {best['tpr']:.0%}, FPR {best['fpr']:.0%}")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
