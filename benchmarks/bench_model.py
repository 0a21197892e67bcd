"""Model-level cost of frozen stacks, against PEFT LoRA r=64 and the bare Hugging Face model.

A TinyLlama-shaped Llama (hidden 2048, MLP 5632, 32 heads, 4 KV heads, vocab 32000) cut to
``--layers`` layers (default 2), random weights, every variant sharing the same base tensors:

| row | ours | reference | goal |
| --- | --- | --- | --- |
| train step (fwd + bwd) | 1 active stack | PEFT LoRA r=64 rsLoRA, same 7 projections | <= 1.05x |
| train step | 4 frozen + 1 active | ours, 0 frozen + 1 active | <= FLOP floor + 0.01 |
| saved-for-backward bytes | 4 frozen + 1 active | PEFT | <= 1.05x |
| forward T=256 (no grad) | S = 1, 5, 10 frozen, ungated | bare model | S=10 <= FLOP floor + 0.03 |
| forward T=1 (decode step) | S = 1, 5, 10 frozen | bare model | S=10 <= 1.35x |
| greedy decode tokens/s | routed, 2 domains x 1 stack | HF ``generate`` on the bare model | >= 0.90x |
| greedy decode tokens/s | ungated, 5 stacks | HF ``generate`` | >= 0.82x |
| outcome discovery | ``RouteLossOracle`` (batched) | one forward per route, examples batched | >= 1.25x faster |

Every round runs each variant of a row once, in a rotated order; a row's ratio is computed per
round (paired) and the median, min and max over rounds are reported, for process CPU time (robust
to other processes on a shared machine) and wall time. Each row also gets its floor: the FLOP ratio
(training, T=256, discovery) or the bytes-read ratio (T=1, decode), computed from the shapes.

    python benchmarks/bench_model.py                 # CPU, fp32, 1 thread, 2 layers: ~5 min on 2 cores
    python benchmarks/bench_model.py --device cuda --dtype bfloat16 [--nf4] --out benchmarks/results/model_cuda.json
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from memory import saved_storage_bytes
from report_json import write_report
from torch import Tensor, nn

from brainstacks_pl import BrainstacksModel, StackConfig
from brainstacks_pl.generation import generate
from brainstacks_pl.routing.discovery import RouteLossOracle, route_weights

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DOMAINS = [f"d{i}" for i in range(10)]
ROWS = ("train", "forward", "decode", "discovery")
GOALS = {
    "train_1active_vs_peft": ("<=", 1.05),
    "train_4frozen_vs_0frozen": ("<= floor +", 0.01),
    "saved_bytes_4frozen_vs_peft": ("<=", 1.05),
    "forward_T256_S10_vs_bare": ("<= floor +", 0.03),
    "forward_T1_S10_vs_bare": ("<=", 1.35),
    "decode_routed_vs_hf": (">=", 0.90),
    "decode_ungated5_vs_hf": (">=", 0.82),
    "discovery_vs_per_route": (">=", 1.25),
}


# ---------------------------------------------------------------------------------------------- models
def build_base(args: argparse.Namespace) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=32,
        num_key_value_heads=4,
        vocab_size=32000,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(dtype=getattr(torch, args.dtype))
    if args.nf4:
        model = quantize_nf4(model, args)
    return model.to(args.device).eval().requires_grad_(False)


def quantize_nf4(model: nn.Module, args: argparse.Namespace) -> nn.Module:
    import bitsandbytes as bnb

    dtype = getattr(torch, args.dtype)
    for name, module in list(model.named_modules()):
        if name.rsplit(".", 1)[-1] in TARGETS:
            quantized = bnb.nn.Linear4bit(
                module.in_features,
                module.out_features,
                bias=False,
                compute_dtype=dtype,
                quant_type="nf4",
                quant_storage=dtype,
            )
            quantized.load_state_dict(module.state_dict())
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, quantized)
    return model


def sharing_copy(base: nn.Module) -> nn.Module:
    """A new module tree over the same weight tensors (injection replaces modules, not weights)."""
    return copy.deepcopy(base, memo={id(p): p for p in base.parameters()})


def random_stack(model: BrainstacksModel, seed: int) -> dict[str, Tensor]:
    """Trained-looking stack-file tensors (``model.stack_shapes()``): in_proj at its initial scale, B small."""
    gen = torch.Generator().manual_seed(seed)
    return {
        key: torch.randn(shape, generator=gen) * (0.02 if key.endswith(".B") else shape[1] ** -0.5)
        for key, shape in model.stack_shapes().items()
    }


def ours(base: nn.Module, frozen: int, active: bool, args: argparse.Namespace) -> BrainstacksModel:
    model = BrainstacksModel(sharing_copy(base), StackConfig(), DOMAINS)
    for index in range(frozen):
        model.load_frozen_stack(random_stack(model, index), DOMAINS[index])
    if active:
        for stack in model.add_stack(DOMAINS[frozen], seed=99):
            nn.init.normal_(stack.B, std=0.02)
        model.to(args.device)
        for stack in model.active_stacks().values():
            stack.to(getattr(torch, args.dtype))
        return model.train()
    return model.to(args.device).eval()


def peft_lora(base: nn.Module) -> nn.Module:
    import peft

    config = peft.LoraConfig(r=64, lora_alpha=16, use_rslora=True, lora_dropout=0.0, target_modules=TARGETS)
    return peft.get_peft_model(sharing_copy(base), config, autocast_adapter_dtype=False).train()


# ---------------------------------------------------------------------------------------------- floors
def shapes(args: argparse.Namespace) -> list[tuple[int, int]]:
    d, m, kv = args.hidden, args.intermediate, args.hidden // 32 * 4
    return [(d, d), (d, kv), (d, kv), (d, d), (d, m), (d, m), (m, d)] * args.layers


def floors(args: argparse.Namespace) -> dict[str, float]:
    """FLOP (multiply-add) and bytes-read ratios the rows cannot beat, from the shapes alone."""
    cfg = StackConfig()
    er, e = cfg.experts * cfg.rank, cfg.experts
    projections = shapes(args)
    head = args.hidden * 32000
    base = sum(i * o for i, o in projections) + head  # MACs per token, weights
    stack = sum((er + e) * i + er * o for i, o in projections)  # one frozen stack
    active = sum((er + 2 * e) * i + er * o for i, o in projections)
    lora = sum(64 * (i + o) for i, o in projections)

    def attention(tokens: int) -> float:  # QK^T and AV per token, causal average
        return 2 * args.layers * args.hidden * tokens / 2

    base_t = base + attention(args.infer_tokens)
    train_base = 2 * (base + attention(args.train_tokens))  # forward + input gradient (weights frozen)
    bytes_base = base * torch.finfo(getattr(torch, args.dtype)).bits / 8
    floor = {
        "train_1active_vs_peft": (train_base + 3 * active) / (train_base + 3 * lora),
        "train_4frozen_vs_0frozen": (train_base + 3 * active + 2 * 4 * stack) / (train_base + 3 * active),
        "bytes_per_bf16_stack_vs_base": stack * 2 / bytes_base,
        "bytes_per_cached_stack_vs_base": stack * torch.finfo(getattr(torch, args.dtype)).bits / 8 / bytes_base,
    }
    for S in (1, 5, 10):
        floor[f"forward_T256_S{S}_vs_bare"] = (base_t + S * stack) / base_t
        floor[f"forward_T1_S{S}_vs_bare"] = 1 + S * floor["bytes_per_bf16_stack_vs_base"]
        floor[f"forward_T1_S{S}_vs_bare_as_read"] = 1 + S * floor["bytes_per_cached_stack_vs_base"]
    floor["decode_routed_vs_hf"] = 1 / (1 + 2 * floor["bytes_per_bf16_stack_vs_base"])
    floor["decode_ungated5_vs_hf"] = 1 / (1 + 5 * floor["bytes_per_bf16_stack_vs_base"])
    # Discovery: per route runs all 5 stacks on every token and the LM head on every position;
    # the oracle runs each batch's switched-on stacks and the head from the first answer token.
    tokens, answer = args.prompt_tokens + args.answer_tokens, args.answer_tokens
    on = discovery_stacks_on()
    per_route = tokens * (base - head + 5 * stack + attention(tokens)) + tokens * head
    batched = tokens * (base - head + on * stack + attention(tokens)) + (answer + 1) * head
    floor["discovery_vs_per_route"] = per_route / batched
    return floor


# ---------------------------------------------------------------------------------------------- timing
def paired(
    fns: dict[str, Callable[[], None]], rounds: int, warmup: int, sync: Callable[[], None]
) -> dict[str, dict[str, list[float]]]:
    """Seconds per call for each fn and round, CPU time and wall time; the order rotates per round."""
    names = list(fns)
    samples = {name: {"cpu": [], "wall": []} for name in names}
    for index in range(warmup + rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            cpu, wall = time.process_time(), time.perf_counter()
            fns[name]()
            sync()
            if index >= warmup:
                samples[name]["cpu"].append(time.process_time() - cpu)
                samples[name]["wall"].append(time.perf_counter() - wall)
    return samples


def ratio(samples: dict, num: str, den: str, invert: bool = False) -> dict:
    """Per-round ``num/den`` (``den/num`` when ``invert``: a speed ratio) as median, min, max."""
    out = {}
    for clock in ("cpu", "wall"):
        values = [(d / n if invert else n / d) for n, d in zip(samples[num][clock], samples[den][clock])]
        out[clock] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    out["seconds"] = {num: statistics.median(samples[num]["wall"]), den: statistics.median(samples[den]["wall"])}
    return out


def saved_bytes(model: nn.Module, step: Callable[[], Tensor]) -> int:
    """Distinct storages autograd keeps for backward; parameters, buffers and the frozen-stack
    operand caches (persistent module state, counted separately) excluded."""
    return saved_storage_bytes(model, step, cached_operands(model))


def cached_operands(model: nn.Module) -> list[Tensor]:
    layers = model.layers.values() if isinstance(model, BrainstacksModel) else []
    return [
        t for layer in layers for operands in layer._operand_cache.values() for t in (operands.w_in, operands.w_out)
    ]


# ---------------------------------------------------------------------------------------------- rows
def bench_training(base: nn.Module, args: argparse.Namespace, sync) -> dict:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 32000, (1, args.train_tokens), generator=gen).to(args.device)
    peft_model, one, five = peft_lora(base), ours(base, 0, True, args), ours(base, 4, True, args)
    uncached = ours(base, 4, True, args)
    uncached.context.cache_frozen = False  # cast per call, stored tensors saved for backward

    def loss_of(model) -> Callable[[], Tensor]:
        def step() -> Tensor:
            if isinstance(model, BrainstacksModel):
                out = model(ids)
                logits, aux = out.logits, out.aux_loss
            else:
                logits, aux = model(input_ids=ids).logits, 0.0
            return F.cross_entropy(logits[0, :-1].float(), ids[0, 1:]) + 0.01 * aux

        return step

    def train(model) -> Callable[[], None]:
        loss = loss_of(model)

        def step() -> None:
            model.zero_grad(set_to_none=True)
            loss().backward()

        return step

    variants = {"peft": peft_model, "ours_0frozen": one, "ours_4frozen": five, "ours_4frozen_uncached": uncached}
    samples = paired({name: train(model) for name, model in variants.items()}, args.rounds, 1, sync)
    memory = {name: saved_bytes(model, loss_of(model)) for name, model in variants.items()}
    cache = sum(
        t.untyped_storage().nbytes()
        for t in {t.untyped_storage().data_ptr(): t for t in cached_operands(five)}.values()
    )
    return {
        "tokens": args.train_tokens,
        "train_1active_vs_peft": ratio(samples, "ours_0frozen", "peft"),
        "train_4frozen_vs_0frozen": ratio(samples, "ours_4frozen", "ours_0frozen"),
        "train_4frozen_uncached_vs_0frozen": ratio(samples, "ours_4frozen_uncached", "ours_0frozen"),
        "saved_bytes_4frozen_uncached_vs_peft": memory["ours_4frozen_uncached"] / memory["peft"],
        "saved_bytes_MiB": {k: v / 2**20 for k, v in memory.items()},
        "saved_bytes_4frozen_vs_peft": memory["ours_4frozen"] / memory["peft"],
        "saved_bytes_0frozen_vs_peft": memory["ours_0frozen"] / memory["peft"],
        "operand_cache_MiB_4frozen": cache / 2**20,
    }


def bench_forward(base: nn.Module, models: dict[int, BrainstacksModel], tokens: int, rounds: int, args, sync) -> dict:
    ids = torch.randint(3, 32000, (1, tokens), generator=torch.Generator().manual_seed(2)).to(args.device)

    def forward(model) -> Callable[[], None]:
        def step() -> None:
            with torch.no_grad():
                model(input_ids=ids) if not isinstance(model, BrainstacksModel) else model(ids)

        return step

    fns = {"bare": forward(base), **{f"S{S}": forward(m) for S, m in models.items()}}
    samples = paired(fns, rounds, 2, sync)
    return {f"forward_T{tokens}_S{S}_vs_bare": ratio(samples, f"S{S}", "bare") for S in models}


def bench_decode(base: nn.Module, routed: BrainstacksModel, ungated: BrainstacksModel, args, sync) -> dict:
    prompt = torch.randint(3, 32000, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(3)).to(
        args.device
    )
    mask = torch.ones_like(prompt)
    new = args.decode_tokens
    weights = torch.zeros(1, len(DOMAINS), device=args.device)
    weights[0, 0], weights[0, 1] = 1.0, 0.2

    def hf() -> None:
        with torch.no_grad():
            base.generate(
                input_ids=prompt,
                attention_mask=mask,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
            )

    def ours_decode(model: BrainstacksModel, scope) -> Callable[[], None]:
        def step() -> None:
            with scope():
                generate(model.model, prompt, mask, new, pad_token_id=0)

        return step

    fns = {
        "hf": hf,
        "routed": ours_decode(routed, lambda: routed.routed(weights)),
        "ungated5": ours_decode(ungated, ungated.ungated),
        "base_only": ours_decode(ungated, ungated.base_only),  # our decode loop, no stack: the loop's own cost
    }
    samples = paired(fns, args.decode_rounds, 1, sync)
    return {
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": new,
        "decode_routed_vs_hf": ratio(samples, "routed", "hf", invert=True),
        "decode_ungated5_vs_hf": ratio(samples, "ungated5", "hf", invert=True),
        "decode_base_only_vs_hf": ratio(samples, "base_only", "hf", invert=True),
        "hf_tokens_per_s": new / statistics.median(samples["hf"]["wall"]),
    }


def discovery_routes(domains: int) -> list[frozenset]:
    names = DOMAINS[:domains]
    return [frozenset()] + [frozenset([d]) for d in names] + [frozenset(names[:2]), frozenset(names[2:4])]


def discovery_stacks_on(groups_per_forward: int = 2) -> float:
    """Mean number of stacks a discovery row runs: the oracle orders routes by domain position and a
    forward runs the union of its route groups' switched-on domains (chat floor included)."""
    routes = sorted(discovery_routes(5), key=lambda r: sorted(DOMAINS.index(d) for d in r))
    counts = []
    for start in range(0, len(routes), groups_per_forward):
        union = sum(route_weights(r, DOMAINS[:5], DOMAINS[0]) for r in routes[start : start + groups_per_forward])
        counts += [int((union > 0).sum())] * len(routes[start : start + groups_per_forward])
    return statistics.mean(counts)


def bench_discovery(model: BrainstacksModel, args, sync) -> dict:
    gen = torch.Generator().manual_seed(4)
    length = args.prompt_tokens + args.answer_tokens
    items = []
    for _ in range(args.discovery_examples):
        ids = torch.randint(3, 32000, (length,), generator=gen)
        labels = ids.clone()
        labels[: args.prompt_tokens] = -100
        items.append((ids, labels))
    routes = discovery_routes(5)
    pairs = [(i, r) for i in range(len(items)) for r in routes]
    # Two route groups per forward, as the router phase's defaults give (32 examples, 64 rows).
    oracle = RouteLossOracle(model, pad_id=0, chat_domain=DOMAINS[0], max_rows=2 * len(items), device=args.device)
    ids = torch.stack([it[0] for it in items]).to(args.device)
    labels = torch.stack([it[1] for it in items]).to(args.device)

    def per_route() -> None:  # the plain way: one forward per route, examples batched, every stack on
        from brainstacks_pl.losses import per_sample_lm_loss

        for route in routes:
            weights = route_weights(route, model.domains, DOMAINS[0]).expand(len(items), -1).to(args.device)
            with torch.no_grad(), model.routed(weights):
                per_sample_lm_loss(model(ids).logits, labels)

    samples = paired(
        {"per_route": per_route, "batched": lambda: oracle.losses(items, pairs)}, args.discovery_rounds, 1, sync
    )
    return {
        "examples": len(items),
        "routes": len(routes),
        "rows": len(pairs),
        "rows_per_forward": oracle.max_rows,
        "tokens_per_row": length,
        "answer_tokens": args.answer_tokens,
        "discovery_vs_per_route": ratio(samples, "batched", "per_route", invert=True),
    }


# ---------------------------------------------------------------------------------------------- report
def verdicts(results: dict, floor: dict) -> dict:
    out = {}
    for key, (op, goal) in GOALS.items():
        if key not in results:
            continue
        value = results[key]["cpu"]["median"] if isinstance(results[key], dict) else results[key]
        bound = floor[key] + goal if op.startswith("<= floor") else goal
        ok = value >= bound if op == ">=" else value <= bound
        out[key] = {
            "value": value,
            "goal": f"{op} {goal}",
            "bound": bound,
            "floor": floor.get(key),
            "verdict": "pass" if ok else "miss",
        }
    return out


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--layers", type=int, default=2, help="decoder layers of the TinyLlama-shaped model (TinyLlama has 22)"
    )
    parser.add_argument("--hidden", type=int, default=2048, help="hidden size (TinyLlama: 2048)")
    parser.add_argument("--intermediate", type=int, default=5632, help="MLP size (TinyLlama: 5632)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="compute dtype of the base"
    )
    parser.add_argument("--nf4", action="store_true", help="bitsandbytes NF4 base projections (QLoRA setting)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: stable ratios on a shared machine)"
    )
    parser.add_argument("--train_tokens", type=int, default=128, help="tokens per training step (batch 1)")
    parser.add_argument("--infer_tokens", type=int, default=256, help="tokens of the no-grad forward row")
    parser.add_argument("--prompt_tokens", type=int, default=32, help="prompt length for decode and discovery rows")
    parser.add_argument("--answer_tokens", type=int, default=16, help="answer length of a discovery example")
    parser.add_argument("--decode_tokens", type=int, default=24, help="greedy tokens per decode call")
    parser.add_argument(
        "--discovery_examples",
        type=int,
        default=4,
        help="examples scored per discovery call (x 8 routes; 2 routes' rows per forward)",
    )
    parser.add_argument("--rounds", type=int, default=10, help="paired rounds for training and forward rows")
    parser.add_argument("--decode_rounds", type=int, default=6, help="paired rounds for decode")
    parser.add_argument("--discovery_rounds", type=int, default=4, help="paired rounds for discovery")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS, help="which rows to measure")
    parser.add_argument("--note", default="", help="free text stored in the JSON (e.g. machine load)")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "model.json"), help="where the JSON goes"
    )
    args = parser.parse_args(argv)
    if not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    start, load = time.perf_counter(), os.getloadavg()
    base = build_base(args)
    results: dict = {}
    if "train" in args.rows:
        results.update(bench_training(base, args, sync))
    inference = {S: ours(base, S, False, args) for S in (1, 5, 10)}
    if "forward" in args.rows:
        results.update(bench_forward(base, inference, args.infer_tokens, args.rounds, args, sync))
        uncached = ours(base, 10, False, args)
        uncached.context.cache_frozen = False  # the same stacks cast on every call
        results.update(bench_forward(base, {**inference, "10_uncached": uncached}, 1, 3 * args.rounds, args, sync))
    if "decode" in args.rows:
        results.update(bench_decode(base, ours(base, 2, False, args), inference[5], args, sync))
    if "discovery" in args.rows:
        results.update(bench_discovery(inference[5], args, sync))
    floor = floors(args)
    report = {
        "benchmark": "bench_model",
        "device": device_name(args.device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "nf4": args.nf4,
        "model": f"Llama hidden {args.hidden}, MLP {args.intermediate}, 32 heads, 4 KV heads, vocab 32000, "
        f"{args.layers} layers, random weights",
        "stack_config": StackConfig().to_dict(),
        "peft": "LoRA r=64, alpha 16, rsLoRA, same 7 projections",
        "args": vars(args),
        "load_average_before": load,
        "load_average_after": os.getloadavg(),
        "seconds": time.perf_counter() - start,
        "note": args.note,
        "floors": floor,
        "results": results,
        "verdicts": verdicts(results, floor),
    }
    print_report(report)
    print(f"wrote {write_report(report, args.out)}")
    return report


def print_report(report: dict) -> None:
    print(f"{report['device']}, {report['threads']} thread(s), {report['model']}; load {report['load_average_before']}")
    print(f"{'row':<32} {'cpu median':>10} {'(min-max)':>14} {'wall median':>11} {'floor':>7} {'goal':>16} verdict")
    for key, v in report["verdicts"].items():
        r = report["results"][key]
        spread = f"({r['cpu']['min']:.2f}-{r['cpu']['max']:.2f})" if isinstance(r, dict) else ""
        wall = f"{r['wall']['median']:.3f}" if isinstance(r, dict) else ""
        floor = f"{v['floor']:.3f}" if v["floor"] is not None else "-"
        print(f"{key:<32} {v['value']:>10.3f} {spread:>14} {wall:>11} {floor:>7} {v['goal']:>16} {v['verdict']}")
    for key, r in report["results"].items():
        if key.startswith("forward_") and key not in report["verdicts"]:
            floor = report["floors"].get(key.replace("_uncached", ""))
            print(
                f"{key:<32} {r['cpu']['median']:>10.3f} ({r['cpu']['min']:.2f}-{r['cpu']['max']:.2f}) "
                f"{r['wall']['median']:>11.3f} {floor or 0:>7.3f}"
            )
        elif key.startswith("train_") and key not in report["verdicts"]:
            print(
                f"{key:<32} {r['cpu']['median']:>10.3f} ({r['cpu']['min']:.2f}-{r['cpu']['max']:.2f}) "
                f"{r['wall']['median']:>11.3f}"
            )
    if "saved_bytes_MiB" in report["results"]:
        print(
            f"saved MiB: {report['results']['saved_bytes_MiB']}, "
            f"operand cache MiB (4 frozen): {report['results']['operand_cache_MiB_4frozen']:.1f}"
        )
    if "decode_base_only_vs_hf" in report["results"]:
        print(
            "our decode loop without stacks vs HF generate: "
            f"{report['results']['decode_base_only_vs_hf']['cpu']['median']:.3f}x tokens/s"
        )


if __name__ == "__main__":
    main()
