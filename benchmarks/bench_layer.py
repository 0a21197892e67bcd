"""Layer-level cost of MoE-LoRA stacks, measured side by side as ratios.

One TinyLlama-shaped projection (2048 -> 2048, and the MLP's 2048 -> 5632), T tokens:

* train step (forward + backward, base frozen, input gradient on): our active stack vs a
  rank-64 LoRA with the same parameter count (a minimal wrapper written here) and vs
  ``peft``'s LoRA r=64; the paper's dense two-einsum MoE-LoRA (builds ``[T, E, d_out]``) is
  the baseline we beat.                                                     target <= 1.05x LoRA
* inference forward with S = 1, 4, 10 frozen stacks vs the bare base layer.  target <= 1.75x at S=10
* activation bytes saved for backward, per token, vs rank-64 LoRA.          target <= 1.10x

Every variant runs once per round, rounds interleaved, and the median over rounds is reported,
so a noisy neighbour on a shared machine slows every variant alike.

    python benchmarks/bench_layer.py                                   # CPU, fp32, T=256 (< 3 min)
    python benchmarks/bench_layer.py --device cuda --dtype bfloat16 --tokens 2048 --nf4
"""

from __future__ import annotations

import argparse
import json
import math
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

from brainstacks_pl import StackConfig, StackContext, StackedLinear
from brainstacks_pl.layers.moe_lora import load_balance_loss, top_k_gates

SHAPES = {"attn 2048->2048": (2048, 2048), "mlp 2048->5632": (2048, 5632)}
TARGETS = {"train_vs_lora": 1.05, "frozen10_vs_base": 1.75, "memory_vs_lora": 1.10}


# ---------------------------------------------------------------------------------------------- variants
class MinimalLoRA(nn.Module):
    """``y = W x + s * B A x`` with A Kaiming-uniform and B zero: the plain LoRA we compare to."""

    def __init__(self, base: nn.Module, d_in: int, d_out: int, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.A = nn.Parameter(torch.empty(rank, d_in).uniform_(-1 / math.sqrt(d_in), 1 / math.sqrt(d_in)))
        self.B = nn.Parameter(torch.zeros(d_out, rank))
        self.scale = alpha / rank

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + F.linear(F.linear(x, self.A), self.B) * self.scale  # [T, d_out]


class DenseMoELoRA(nn.Module):
    """The reference code's MoE-LoRA: per-expert outputs ``[T, E, d_out]``, then the gated sum."""

    def __init__(self, base: nn.Module, d_in: int, d_out: int, config: StackConfig):
        super().__init__()
        E, r = config.experts, config.rank
        self.base, self.config = base, config
        self.A = nn.Parameter(torch.empty(E, r, d_in).uniform_(-1 / math.sqrt(d_in), 1 / math.sqrt(d_in)))
        self.B = nn.Parameter(torch.randn(E, d_out, r) * 1e-3)
        self.router = nn.Parameter(torch.randn(E, d_in) * 0.02)
        self.noise = nn.Parameter(torch.zeros(E, d_in))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits = F.linear(x, self.router) + F.softplus(F.linear(x, self.noise)) * torch.randn(
            x.shape[0], self.config.experts, device=x.device, dtype=x.dtype
        )
        gates = top_k_gates(logits, self.config.top_k)  # [T, E]
        hidden = torch.einsum("td,erd->ter", x, self.A)  # [T, E, r]
        per_expert = torch.einsum("ter,eor->teo", hidden, self.B)  # [T, E, d_out]
        delta = (per_expert * gates.unsqueeze(-1)).sum(1) * self.config.scale  # [T, d_out]
        return self.base(x) + delta, load_balance_loss(logits, gates)[0]


def make_base(d_in: int, d_out: int, device: str, dtype: torch.dtype, nf4: bool) -> nn.Module:
    linear = nn.Linear(d_in, d_out, bias=False, dtype=dtype)
    if nf4:
        import bitsandbytes as bnb

        quantized = bnb.nn.Linear4bit(
            d_in,
            d_out,
            bias=False,
            compute_dtype=dtype,
            quant_type="nf4",
            compress_statistics=True,
            quant_storage=dtype,
        )
        quantized.load_state_dict(linear.state_dict())
        linear = quantized
    linear = linear.to(device)
    linear.requires_grad_(False)
    return linear


def make_peft(base: nn.Module) -> nn.Module | None:
    try:
        import peft
    except ImportError:
        return None

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = base

        def forward(self, x: Tensor) -> Tensor:
            return self.proj(x)

    config = peft.LoraConfig(r=64, lora_alpha=16, lora_dropout=0.0, target_modules=["proj"])
    return peft.get_peft_model(Holder(), config, autocast_adapter_dtype=False)


def make_stacked(
    base: nn.Module, d_in: int, d_out: int, frozen: int, active: bool, device: str, dtype: torch.dtype
) -> StackedLinear:
    config = StackConfig()
    layer = StackedLinear(base, config, StackContext(domains=["chat"]), name="proj")
    E, r = config.experts, config.rank
    gen = torch.Generator().manual_seed(0)
    for _ in range(frozen):
        tensors = {
            "in_proj": torch.randn(E * r + 2 * E, d_in, generator=gen) / math.sqrt(d_in),
            "B": torch.randn(d_out, E * r, generator=gen) * 1e-2,
        }
        layer.append_frozen(tensors, "chat")
    if active:
        stack = layer.add_active("chat", generator=gen)
        with torch.no_grad():
            stack.B.normal_(0.0, 1e-3, generator=gen)
    layer = layer.to(device)
    if active:  # adapters in the compute dtype, like every other variant here
        layer.active.to(dtype)
    return layer


def cast_adapter(module: nn.Module, base: nn.Module, device: str, dtype: torch.dtype) -> nn.Module:
    """Move the adapter's own parameters to ``device``/``dtype``; the (maybe 4-bit) base stays as built."""
    base_params = {id(p) for p in base.parameters()}
    for param in module.parameters():
        if id(param) not in base_params:
            param.data = param.data.to(device=device, dtype=dtype)
    return module


# ---------------------------------------------------------------------------------------------- measuring
def train_step(module: nn.Module, x: Tensor, grad: Tensor, context: StackContext | None = None) -> Callable[[], None]:
    """fwd + bwd with the upstream gradient ``grad`` (and 0.01 * aux where there is one)."""

    def step() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        if context is not None:
            context.aux_losses = []
        out = module(x)
        outputs, grads = (
            ([out], [grad])
            if isinstance(out, Tensor)
            else ([out[0], out[1]], [grad, torch.tensor(0.01, device=x.device)])
        )
        if context is not None and context.aux_losses:
            outputs.append(torch.stack(context.aux_losses).sum())
            grads.append(torch.tensor(0.01, device=x.device))
        torch.autograd.backward(outputs, grads)

    return step


def forward_only(module: nn.Module, x: Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            module(x)

    return step


def time_interleaved(fns: dict[str, Callable[[], None]], repeats: int, warmup: int, device: str) -> dict[str, float]:
    """Median milliseconds per call; one call of every fn per round."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(warmup + repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if round_index >= warmup:
                samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def saved_bytes(module: nn.Module, x: Tensor, context: StackContext | None = None) -> int:
    """Bytes of distinct storages autograd saves for backward, parameters and buffers excluded."""
    if context is not None:
        context.aux_losses = []
    return saved_storage_bytes(module, lambda: module(x))


# ---------------------------------------------------------------------------------------------- main
def bench_shape(label: str, d_in: int, d_out: int, args: argparse.Namespace, dtype: torch.dtype) -> dict:
    device, T = args.device, args.tokens
    torch.manual_seed(0)
    base = make_base(d_in, d_out, device, dtype, args.nf4)
    x = torch.randn(T, d_in, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(T, d_out, device=device, dtype=dtype)
    ours = make_stacked(base, d_in, d_out, frozen=0, active=True, device=device, dtype=dtype).train()
    lora = cast_adapter(MinimalLoRA(base, d_in, d_out, rank=64, alpha=16), base, device, dtype)
    dense = cast_adapter(DenseMoELoRA(base, d_in, d_out, StackConfig()), base, device, dtype)
    peft_model = make_peft(base)
    if peft_model is not None:
        peft_model = cast_adapter(peft_model, base, device, dtype)
    ours_params = sum(p.numel() for p in ours.active.parameters())
    lora_params = sum(p.numel() for p in lora.parameters() if p.requires_grad)

    train = {
        "base (frozen)": train_step(base, x, grad),
        "ours MoE-LoRA": train_step(ours, x, grad, ours.context),
        "LoRA r=64": train_step(lora, x, grad),
        "dense MoE-LoRA": train_step(dense, x, grad),
    }
    if peft_model is not None:
        train["peft LoRA r=64"] = train_step(peft_model, x, grad)
    train_ms = time_interleaved(train, args.repeats, args.warmup, device)

    frozen_layers = {
        S: make_stacked(base, d_in, d_out, frozen=S, active=False, device=device, dtype=dtype).eval()
        for S in (1, 4, 10)
    }
    infer = {"base": forward_only(base, x.detach())}
    infer.update({f"S={S}": forward_only(layer, x.detach()) for S, layer in frozen_layers.items()})
    infer_ms = time_interleaved(infer, args.repeats, args.warmup, device)

    memory = {
        "ours MoE-LoRA": saved_bytes(ours, x, ours.context) / T,
        "LoRA r=64": saved_bytes(lora, x) / T,
        "dense MoE-LoRA": saved_bytes(dense, x) / T,
    }
    if peft_model is not None:
        memory["peft LoRA r=64"] = saved_bytes(peft_model, x) / T
    x_bytes = d_in * x.element_size()
    ratios = {
        "train_vs_lora": train_ms["ours MoE-LoRA"] / train_ms["LoRA r=64"],
        "train_vs_peft": train_ms["ours MoE-LoRA"] / train_ms["peft LoRA r=64"] if peft_model is not None else None,
        "dense_vs_ours": train_ms["dense MoE-LoRA"] / train_ms["ours MoE-LoRA"],
        "frozen1_vs_base": infer_ms["S=1"] / infer_ms["base"],
        "frozen4_vs_base": infer_ms["S=4"] / infer_ms["base"],
        "frozen10_vs_base": infer_ms["S=10"] / infer_ms["base"],
        "memory_vs_lora": memory["ours MoE-LoRA"] / memory["LoRA r=64"],
        "memory_vs_lora_without_input": (memory["ours MoE-LoRA"] - x_bytes) / (memory["LoRA r=64"] - x_bytes),
    }
    verdicts = {key: ("pass" if ratios[key] <= target else "miss") for key, target in TARGETS.items()}
    return {
        "shape": label,
        "d_in": d_in,
        "d_out": d_out,
        "params": {"ours": ours_params, "lora_r64": lora_params},
        "train_ms": train_ms,
        "infer_ms": infer_ms,
        "saved_bytes_per_token": memory,
        "input_bytes_per_token": x_bytes,
        "ratios": ratios,
        "verdicts": verdicts,
        "peft": "measured" if peft_model is not None else "skipped: peft not installed",
    }


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def print_table(results: list[dict]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(json.dumps(results, indent=2))
        return
    table = Table(title="bench_layer: ratios (lower is better unless noted)")
    for column in ("shape", "metric", "ours", "reference", "ratio", "target", "verdict"):
        table.add_column(column)
    for r in results:
        t, i, m, q, v = r["train_ms"], r["infer_ms"], r["saved_bytes_per_token"], r["ratios"], r["verdicts"]
        rows = [
            (
                "train ms vs LoRA r=64",
                t["ours MoE-LoRA"],
                t["LoRA r=64"],
                q["train_vs_lora"],
                "<= 1.05",
                v["train_vs_lora"],
            ),
            (
                "train ms vs peft r=64",
                t["ours MoE-LoRA"],
                t.get("peft LoRA r=64"),
                q["train_vs_peft"],
                "-",
                r["peft"] if q["train_vs_peft"] is None else "",
            ),
            (
                "dense MoE-LoRA / ours (speed-up)",
                t["ours MoE-LoRA"],
                t["dense MoE-LoRA"],
                q["dense_vs_ours"],
                "> 1",
                "",
            ),
            ("train ms, base layer alone", t["base (frozen)"], None, None, "", ""),
            ("infer ms S=1 vs base", i["S=1"], i["base"], q["frozen1_vs_base"], "", ""),
            ("infer ms S=4 vs base", i["S=4"], i["base"], q["frozen4_vs_base"], "", ""),
            ("infer ms S=10 vs base", i["S=10"], i["base"], q["frozen10_vs_base"], "<= 1.75", v["frozen10_vs_base"]),
            (
                "saved bytes/token vs LoRA",
                m["ours MoE-LoRA"],
                m["LoRA r=64"],
                q["memory_vs_lora"],
                "<= 1.10",
                v["memory_vs_lora"],
            ),
            (
                "  same, input x not counted",
                m["ours MoE-LoRA"] - r["input_bytes_per_token"],
                m["LoRA r=64"] - r["input_bytes_per_token"],
                q["memory_vs_lora_without_input"],
                "",
                "",
            ),
        ]
        for metric, ours, ref, ratio, target, verdict in rows:

            def fmt(value: float | None) -> str:
                return "-" if value is None else f"{value:.2f}"

            table.add_row(r["shape"], metric, fmt(ours), fmt(ref), fmt(ratio), target, verdict)
    Console().print(table)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="compute dtype of base and adapters",
    )
    parser.add_argument("--tokens", type=int, default=256, help="tokens per step (T)")
    parser.add_argument("--nf4", action="store_true", help="bitsandbytes NF4 base layer (QLoRA setting)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 15 on CPU, 50 on GPU)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default 1 on CPU: stable ratios on a shared machine; 0 = torch's choice)",
    )
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "layer.json"), help="where the JSON goes"
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 50 if args.device.startswith("cuda") else 15
    if args.threads is None and not args.device.startswith("cuda"):
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    results = [bench_shape(label, d_in, d_out, args, dtype) for label, (d_in, d_out) in SHAPES.items()]
    report = {
        "benchmark": "bench_layer",
        "device": device_name(args.device),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "nf4": args.nf4,
        "tokens": args.tokens,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "stack_config": StackConfig().to_dict(),
        "targets": TARGETS,
        "results": results,
    }
    print_table(results)
    print(f"wrote {write_report(report, args.out)}")
    return report


if __name__ == "__main__":
    main()
