"""Meta-router costs, measured side by side as ratios.

* outcome discovery: N examples x C routes scored by ``RouteLossOracle`` (rows of one batch
  grouped by route, each with its own routing weights; only switched-on stacks run; the LM
  head only on answer positions) vs one forward per (example, route) pair.  target >= 3x faster
  (also reported: one forward per route with the examples batched, every stack on)
* router overhead per prompt (base-only features + router) vs generating 64 tokens with the
  KV-cached decoder (``RoutedGenerator.decode_batch``).                      reported

Torch runs with 1 thread by default: with 2 threads on a shared 2-core machine the per-pair
baseline pays thread overhead on small ops, which inflates the batching speed-up (2.52x with
2 threads vs ~1.2x with 1 thread before the oracle skipped unused stacks).

Routed vs ungated vs base-only loss on a trained run is ``benchmarks/reproduce/routing.py``.

Variants run interleaved for ``--repeats`` rounds and the median is reported, so a noisy
neighbour on a shared machine slows every variant alike.

    python benchmarks/bench_router.py                        # demo base, CPU, 1 thread (~1-2 min)
    python benchmarks/bench_model.py                         # the same at d=2048 (TinyLlama shapes)
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from report_json import write_report

from brainstacks_pl import BrainstacksModel, StackConfig
from brainstacks_pl.data.curriculum import CurriculumDataModule, demo_domains, encode_examples
from brainstacks_pl.inference import RoutedGenerator, StackCache
from brainstacks_pl.layers.router import MetaRouter
from brainstacks_pl.losses import per_sample_lm_loss
from brainstacks_pl.routing.discovery import RouteLossOracle, route_weights
from brainstacks_pl.routing.features import pad_right
from brainstacks_pl.routing.spec import RouterSpec
from brainstacks_pl.tokenization import pad_token_id

DOMAINS = ["chat", "code", "math", "medical", "reasoning"]
TARGET_SPEEDUP = 3.0


def demo_stacks(seed: int = 0) -> BrainstacksModel:
    """The demo base with one random (non-zero) frozen stack per domain."""
    stacks = BrainstacksModel.from_pretrained("brainstacks-demo", StackConfig(), DOMAINS).eval()
    for index, domain in enumerate(DOMAINS):
        for stack in stacks.add_stack(domain, seed=seed + index):
            torch.nn.init.normal_(stack.B, std=0.02, generator=torch.Generator().manual_seed(index))
        stacks.freeze_stack()
    return stacks


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_discovery(stacks: BrainstacksModel, tokenizer, n_examples: int, repeats: int) -> dict:
    data = CurriculumDataModule(demo_domains(), tokenizer="brainstacks-demo", max_seq_len=128)
    examples = [ex for d in DOMAINS for ex in data.examples(d, "val")[: max(1, n_examples // len(DOMAINS))]]
    encoded = encode_examples(tokenizer, examples, 128)
    items = [encoded.item(i) for i in range(len(encoded))]
    routes = (
        [frozenset()] + [frozenset([d]) for d in DOMAINS] + [frozenset(p) for p in itertools.combinations(DOMAINS, 2)]
    )
    pairs = [(i, r) for i in range(len(items)) for r in routes]
    batched, single = (
        RouteLossOracle(stacks, pad_token_id(tokenizer), max_rows=len(routes) * 4),
        RouteLossOracle(stacks, pad_token_id(tokenizer), max_rows=1),
    )

    def per_route() -> None:  # one forward per route, the examples batched
        ids, _ = pad_right([it[0].tolist() for it in items], pad_token_id(tokenizer))
        labels, _ = pad_right([it[1].tolist() for it in items], -100)
        mask = (torch.arange(ids.shape[1])[None] < torch.tensor([len(it[0]) for it in items])[:, None]).long()
        for route in routes:
            weights = route_weights(route, DOMAINS).expand(len(items), -1)
            with torch.no_grad(), stacks.routed(weights):
                per_sample_lm_loss(stacks(ids, mask).logits, labels)

    timings = {"batched": [], "per_pair": [], "per_route": []}
    for _ in range(repeats):  # interleaved rounds
        timings["batched"].append(median_time(lambda: batched.losses(items, pairs), 1))
        timings["per_pair"].append(median_time(lambda: single.losses(items, pairs), 1))
        timings["per_route"].append(median_time(per_route, 1))
    med = {k: statistics.median(v) for k, v in timings.items()}
    speedup = med["per_pair"] / med["batched"]
    return {
        "examples": len(items),
        "routes": len(routes),
        "pairs": len(pairs),
        "rows_per_forward": batched.max_rows,
        "seconds": med,
        "pairs_per_second": {k: len(pairs) / v for k, v in med.items()},
        "speedup_vs_per_pair": speedup,
        "speedup_vs_per_route": med["per_route"] / med["batched"],
        "target": TARGET_SPEEDUP,
        "verdict": "pass" if speedup >= TARGET_SPEEDUP else "miss",
    }


def bench_overhead(stacks: BrainstacksModel, tokenizer, repeats: int, tokens: int = 64) -> dict:
    import tempfile

    torch.manual_seed(0)
    router = MetaRouter(stacks.model.config.hidden_size, len(DOMAINS), hidden=128).eval()
    with tempfile.TemporaryDirectory() as tmp:
        from brainstacks_pl.run import RunDirectory

        run = RunDirectory(tmp)
        manifest = run.open(stacks)
        spec = RouterSpec(domains=tuple(DOMAINS), router_seq_len=256)
        generator = RoutedGenerator(stacks, tokenizer, manifest, tmp, router, spec, StackCache(tmp, manifest))
        generator.loaded = tuple(DOMAINS)  # the random stacks are already resident
        prompt = ["A patient asks how many milligrams are in 2.5 grams of a drug; explain the conversion."]
        route_s = median_time(lambda: generator.route(prompt), repeats)
        with stacks.ungated():
            gen_s = median_time(
                lambda: generator.decode_batch([generator.encode(prompt[0])], tokens, 0.0, 0), max(1, repeats // 2)
            )
    return {"route_seconds": route_s, f"generate_{tokens}_seconds": gen_s, "overhead_fraction": route_s / gen_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=10, help="examples scored in the discovery benchmark")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median reported)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: ratios free of thread overhead on a shared machine)"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "router.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from brainstacks_pl.assets import resolve_model_name

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_name("brainstacks-demo"))
    stacks = demo_stacks()
    result = {
        "benchmark": "router",
        "device": "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.processor() or platform.machine(),
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
        if Path("/proc/cpuinfo").exists()
        else "",
        "load_average": os.getloadavg(),
        "base": "brainstacks-demo (d=128, 4 layers)",
        "stack_config": StackConfig().to_dict(),
        "discovery": bench_discovery(stacks, tokenizer, args.examples, args.repeats),
        "router_overhead": bench_overhead(stacks, tokenizer, args.repeats),
    }
    write_report(result, args.out)
    d, o = result["discovery"], result["router_overhead"]
    print(f"{'measurement':<52} {'value':>12}")
    print(f"{'discovery: pairs (examples x routes)':<52} {d['pairs']:>12} ({d['examples']} x {d['routes']})")
    for key, value in d["pairs_per_second"].items():
        print(f"{'discovery pairs/s, ' + key:<52} {value:>12.1f}")
    print(
        f"{'speedup batched vs one forward per pair':<52} {d['speedup_vs_per_pair']:>11.2f}x  "
        f"target >= {TARGET_SPEEDUP}x: {d['verdict']}"
    )
    print(f"{'speedup batched vs one forward per route':<52} {d['speedup_vs_per_route']:>11.2f}x")
    print(f"{'router per prompt (features + router), ms':<52} {1000 * o['route_seconds']:>12.1f}")
    print(f"{'generate 64 tokens (KV cache), ms':<52} {1000 * o['generate_64_seconds']:>12.1f}")
    print(f"{'router overhead / generation':<52} {o['overhead_fraction']:>12.3%}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
