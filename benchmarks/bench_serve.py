"""``brainstacks serve`` under load: N concurrent clients vs the same requests one at a time.

A fixed set of requests (prompts from every demo domain, each pinned to its domain's stacks or
left to the router, so one batch holds different routes) is sent to a server subprocess on
127.0.0.1 by 1, 4 and 16 concurrent clients (threads, plain HTTP, non-streaming, greedy).
Reported per concurrency: total completion tokens / wall time, request latency p50 / p95, and
throughput relative to concurrency 1 (requests served one at a time, each its own batch).

    python benchmarks/bench_serve.py                       # demo base + random stacks, ~1-3 min on 2 cores
    python benchmarks/bench_serve.py --run runs/demo       # a trained run instead

target: >= 2.5x the one-at-a-time throughput at 16 clients. Bounded: --requests per level and
--time_limit seconds in all (requests not sent by then are skipped and the result says so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from report_json import write_report

from brainstacks_pl.serve.server import launch

DOMAINS = ["chat", "code", "math", "medical", "reasoning"]
TARGET_SPEEDUP = 2.5
ROOT = Path(__file__).resolve().parents[1]


def write_demo_run(root: Path) -> Path:
    """The demo base with one random (non-zero) stack per domain and an untrained router."""
    from brainstacks_pl import BrainstacksModel, StackConfig
    from brainstacks_pl.layers.router import MetaRouter
    from brainstacks_pl.routing.artifact import save_router
    from brainstacks_pl.routing.spec import RouterSpec
    from brainstacks_pl.run import RunDirectory
    from brainstacks_pl.storage import StackRecord

    stacks = BrainstacksModel.from_pretrained("brainstacks-demo", StackConfig(), DOMAINS).eval()
    run = RunDirectory(root / "demo")
    run.open(stacks)
    for index, domain in enumerate(DOMAINS):
        for stack in stacks.add_stack(domain, seed=index):
            torch.nn.init.normal_(stack.B, std=0.02, generator=torch.Generator().manual_seed(index))
        run.write_stack(stacks.freeze_stack(), StackRecord(file="", sha256="", domain=domain, round=0))
    torch.manual_seed(0)
    router = MetaRouter(stacks.model.config.hidden_size, len(DOMAINS), hidden=64)
    save_router(run.root, run.manifest, router, RouterSpec(domains=tuple(DOMAINS), router_seq_len=128))
    run.save_manifest()
    return run.root


def requests_for(name: str, count: int, max_tokens: int) -> list[dict]:
    """``count`` chat requests cycling through the domains' prompts; routes cycle pinned / routed."""
    from brainstacks_pl.data.curriculum import CurriculumDataModule
    from brainstacks_pl.data.sources import demo_domains

    data = CurriculumDataModule(demo_domains(), tokenizer="brainstacks-demo", max_seq_len=128)
    prompts = {d: [ex.prompt for ex in data.examples(d, "val")] for d in DOMAINS}
    out = []
    for i in range(count):
        domain = DOMAINS[i % len(DOMAINS)]
        model = name if (i // len(DOMAINS)) % 2 else f"{name}:{domain}"  # alternate rounds: pinned, then routed
        prompt = prompts[domain][(i // len(DOMAINS)) % len(prompts[domain])]
        out.append(
            {
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "temperature": 0,
            }
        )
    return out


def post(url: str, body: dict) -> tuple[float, int]:
    """(latency s, completion tokens) of one non-streaming request."""
    start = time.perf_counter()
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as reply:
        usage = json.loads(reply.read())["usage"]
    return time.perf_counter() - start, usage["completion_tokens"]


def run_level(url: str, bodies: list[dict], clients: int, deadline: float) -> dict:
    results, skipped = [], 0

    def one(body):
        if time.monotonic() > deadline:
            return None
        return post(url, body)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for result in pool.map(one, bodies):
            if result is None:
                skipped += 1
            else:
                results.append(result)
    wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)

    def pct(q: float) -> float | None:
        return latencies[min(len(latencies) - 1, round(q * (len(latencies) - 1)))] if latencies else None

    return {
        "clients": clients,
        "requests": len(results),
        "skipped": skipped,
        "completion_tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2) if wall else None,
        "latency_p50_s": pct(0.5),
        "latency_p95_s": pct(0.95),
        "latency_mean_s": statistics.fmean(latencies) if latencies else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run", default=None, help="run directory (default: the demo base with random stacks, written to a temp dir)"
    )
    parser.add_argument(
        "--clients", default="1,4,16", help="comma list of concurrency levels; the first is the baseline"
    )
    parser.add_argument("--requests", type=int, default=32, help="requests per level (the same set at every level)")
    parser.add_argument("--max_tokens", type=int, default=48, help="max_tokens per request (greedy)")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument(
        "--time_limit", type=float, default=600.0, help="seconds for the whole benchmark; later requests are skipped"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/serve.json"))
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",")]
    deadline = time.monotonic() + args.time_limit

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else write_demo_run(Path(tmp))
        bodies = requests_for(run.resolve().name, args.requests, args.max_tokens)
        options = [
            "--threads",
            str(args.threads),
            "--max_batch",
            str(max(levels)),
            "--max_queue",
            "256",
            "--log_level",
            "warning",
        ]
        proc, url, _ = launch(run, options)
        try:
            post(f"{url}/v1/chat/completions", bodies[0])  # warm-up
            results = [run_level(f"{url}/v1/chat/completions", bodies, clients, deadline) for clients in levels]
        finally:
            proc.terminate()
            proc.wait(60)

    base = results[0]["tokens_per_s"]
    for r in results:
        r["throughput_vs_one_at_a_time"] = round(r["tokens_per_s"] / base, 3) if base and r["tokens_per_s"] else None
    top = results[-1]
    verdict = (
        "pass"
        if top["throughput_vs_one_at_a_time"]
        and top["throughput_vs_one_at_a_time"] >= TARGET_SPEEDUP
        and not top["skipped"]
        else "miss"
    )
    report = {
        "benchmark": "serve",
        "device": "cpu",
        "torch": torch.__version__,
        "server_threads": args.threads,
        "cpus": os.cpu_count(),
        "platform": platform.machine(),
        "base": "brainstacks-demo (d=128, 4 layers)" if not args.run else str(args.run),
        "requests_per_level": args.requests,
        "max_tokens": args.max_tokens,
        "routes": "cycled: RUN:<domain> (pinned) for 5 domains, then RUN (routed)",
        "levels": results,
        "target": {"throughput_vs_one_at_a_time_at_max_clients": TARGET_SPEEDUP, "verdict": verdict},
    }
    write_report(report, args.out)
    for r in results:
        print(
            f"{r['clients']:>3} clients: {r['tokens_per_s']:8.1f} tok/s  x{r['throughput_vs_one_at_a_time']:<6} "
            f"p50 {r['latency_p50_s']:.3f}s  p95 {r['latency_p95_s']:.3f}s  "
            f"({r['requests']} requests, {r['completion_tokens']} tokens, {r['skipped']} skipped)"
        )
    print(f"target >= {TARGET_SPEEDUP}x at {top['clients']} clients: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
