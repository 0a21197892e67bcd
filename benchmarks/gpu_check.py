"""The scale-out check for a GPU machine: DDP, QLoRA (NF4) and FSDP + NF4 on TinyLlama-shaped layers.

One prepared script for the few minutes a GPU is lent (issue 8). Every case is a real
``brainstacks fit`` in a subprocess (DDP re-executes the command line), one domain of the
bundled demo data, on a randomly initialised model with TinyLlama-1.1B's shapes (no hub
access needed). Each case records real tokens/s and peak memory per round through
``ThroughputRecorder``; ``--rounds 2`` also checks that a second stack trains under the
strategy (a round adds a new stack to an already sharded model). FSDP is FSDP2 through
Lightning's ``ModelParallelStrategy``, which also runs on CPU processes.

    python benchmarks/gpu_check.py                                  # on the GPU box, ~5-8 min
    python benchmarks/gpu_check.py --shape tiny --accelerator cpu   # the same code path on a CPU (tests)

Writes ``benchmarks/results/gpu_check_<device>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from brainstacks_pl.tokenization import byte_tokenizer

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

SHAPES = {
    # TinyLlama-1.1B: 22 layers, d=2048, MLP 5632, 32 heads, 4 KV heads (vocab cut to 32000).
    "tinyllama": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        vocab_size=32000,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=260,
    ),
}


def fsdp2_strategy(devices: int) -> str:
    """Pure FSDP2 over every device (Lightning's ModelParallelStrategy, see configs/fsdp_demo.yaml)."""
    return (
        "--trainer.strategy={class_path: lightning.pytorch.strategies.ModelParallelStrategy, init_args: "
        f"{{data_parallel_size: {devices}, tensor_parallel_size: 1, save_distributed_checkpoint: false}}}}"
    )


def cases(devices: int, gpu: bool) -> dict[str, list[str]]:
    """Name -> extra CLI arguments. bf16-mixed on a GPU, fp32 on the CPU (bf16 matmuls are slow there)."""
    common = ["--trainer.devices", str(devices), "--trainer.precision", "bf16-mixed" if gpu else "32-true"]
    ddp, fsdp = ["--trainer.strategy", "ddp"], [fsdp2_strategy(devices)]
    nf4 = ["--model.quantization", "nf4", "--model.dtype", "bfloat16" if gpu else "float32"]
    return {
        "ddp_dense": [*ddp, *common],
        "ddp_nf4": [*ddp, *common, *nf4],
        "fsdp_dense": [*fsdp, *common],
        "fsdp_nf4": [*fsdp, *common, *nf4],
    }


def write_model(shape: str, path: Path) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(
        **SHAPES[shape],
        max_position_embeddings=1024,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def run_case(name: str, extra: list[str], args: argparse.Namespace, model_dir: Path, work: Path) -> dict:
    out = work / f"{name}.json"
    command = [
        sys.executable,
        "-m",
        "brainstacks_pl",
        "fit",
        "--config",
        str(REPO / "configs" / "demo.yaml"),
        "--model.model_name_or_path",
        str(model_dir),
        "--trainer.accelerator",
        args.accelerator,
        "--trainer.default_root_dir",
        str(work / name),
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        str(args.steps),
        "--trainer.limit_val_batches",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
        "--data.max_seq_len",
        str(args.seq_len),
        "--data.batch_size",
        str(args.batch_size),
        "--data.max_val_examples",
        "8",
        '--data.domains=[{name: chat, path: "demo:chat"}]',
        "--boosting.max_rounds",
        str(args.rounds),
        "--boosting.min_loss_delta",
        "-1.0",
        "--null_space.mode",
        "off",
        "--trainer.callbacks=[{class_path: brainstacks_pl.callbacks.throughput.ThroughputRecorder, "
        f"init_args: {{out_path: {out}}}}}]",
        *extra,
    ]
    started = time.monotonic()
    done = subprocess.run(
        command,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=args.timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    result = {
        "case": name,
        "returncode": done.returncode,
        "wall_s": round(time.monotonic() - started, 1),
        "args": extra,
    }
    if done.returncode != 0:
        # The last exception line names the failure; the tail keeps the context for a bug report.
        errors = [
            line for line in done.stderr.splitlines() if re.match(r"^(\[rank\d+\]: )?\w*(Error|Exception)\b", line)
        ]
        result.update(status="failed", error=errors[-1] if errors else "", stderr_tail=done.stderr[-4000:])
    else:
        result.update(status="ok", rounds=json.loads(out.read_text()))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tinyllama")
    parser.add_argument("--accelerator", choices=["gpu", "cpu"], default="gpu")
    parser.add_argument("--devices", type=int, default=0, help="0 = every visible GPU (1 on the CPU)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per round (the first 2 are warm-up)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="boosting rounds: 2 checks a second stack under each strategy"
    )
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per case")
    parser.add_argument("--cases", nargs="*", default=None, help="subset of: ddp_dense ddp_nf4 fsdp_dense fsdp_nf4")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    gpu = args.accelerator == "gpu"
    if gpu and not torch.cuda.is_available():
        parser.error("--accelerator gpu but torch sees no CUDA device (use --accelerator cpu for the CPU path)")
    devices = args.devices or (torch.cuda.device_count() if gpu else 1)
    device_name = torch.cuda.get_device_name(0) if gpu else platform.processor() or "cpu"
    selected = {k: v for k, v in cases(devices, gpu).items() if args.cases is None or k in args.cases}
    results = {
        "device": device_name,
        "devices": devices,
        "shape": args.shape,
        "steps": args.steps,
        "rounds": args.rounds,
        "seq_len": args.seq_len,
        "batch_size_per_device": args.batch_size,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cases": [],
    }
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        model_dir = write_model(args.shape, work / "model")
        for name, extra in selected.items():
            results["cases"].append(run_case(name, extra, args, model_dir, work))

    out = args.out or RESULTS / f"gpu_check_{re.sub(r'[^A-Za-z0-9]+', '_', device_name).strip('_').lower()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"{device_name} x{devices}, shape {args.shape}, seq {args.seq_len}, batch {args.batch_size}/device")
    print(f"{'case':<12} {'status':<8} {'stack':<14} {'tokens/s':>10} {'peak GiB':>9}")
    for case in results["cases"]:
        for record in case.get("rounds") or [{}]:
            print(
                f"{case['case']:<12} {case['status']:<8} {record.get('stack', '-'):<14} "
                f"{record.get('tokens_per_s', float('nan')):>10.0f} {record.get('peak_memory_gib', float('nan')):>9.2f}"
            )
        if case["status"] == "failed":
            print(f"    {case['error']}")
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
