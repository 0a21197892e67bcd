"""MoE-LoRA vs a parameter-matched LoRA, and residual boosting vs one long stack, on the demo.

Side by side in one run, on the demo's first domain (chat) and the bundled demo base:

1. validation loss per step of MoE-LoRA (4 experts x rank 16, top-2) vs a single LoRA of
   rank 64 (the same machinery with one expert: parameter-matched), trained identically;
   the step at which MoE-LoRA first reaches the LoRA's final loss (the paper: ~0.4 of the
   steps), and the wall-time ratio per training step;
2. validation loss after boosting rounds 1, 2, 3 (each ``--round_steps`` steps, frozen in
   between) vs one stack trained for the same total number of steps.

    python benchmarks/bench_sft.py [--steps 120] [--round_steps 60] [--eval_every 10]

Prints a table and writes benchmarks/results/sft.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from brainstacks_pl.config import StackConfig
from brainstacks_pl.data import CurriculumDataModule, DomainConfig
from brainstacks_pl.modules.sft import StackSFTModule, evaluate_loss

RESULTS = Path(__file__).resolve().parent / "results"
DOMAIN = "chat"


class Recorder(Callback):
    """Validation loss per evaluation and the time of each training step."""

    def __init__(self):
        self.curve: list[tuple[int, float]] = []
        self.step_times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.step_times.append(time.perf_counter() - self._t0)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.curve.append((trainer.global_step, float(trainer.callback_metrics["val_loss"])))


def make_data(args) -> CurriculumDataModule:
    data = CurriculumDataModule([DomainConfig(DOMAIN, f"demo:{DOMAIN}")], tokenizer="brainstacks-demo", max_seq_len=192, batch_size=8, max_val_examples=48, seed=0)
    data.setup("fit")
    return data


def train(module: StackSFTModule, data, steps: int, eval_every: int, recorder: Recorder) -> None:
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, val_check_interval=eval_every, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, gradient_clip_val=1.0, callbacks=[recorder],
    )
    trainer.fit(module, datamodule=data)


def new_module(stack: StackConfig, lr: float) -> StackSFTModule:
    module = StackSFTModule("brainstacks-demo", stack=stack, domains=[DOMAIN], optimizer=lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=0.0), warmup_steps=5, log_expert_utilisation_every=0)
    module.build()
    return module


def run_curve(name: str, stack: StackConfig, args, data) -> dict:
    torch.manual_seed(0)
    module = new_module(stack, args.lr)
    module.stacks.add_stack(DOMAIN, 0, seed=0)
    recorder = Recorder()
    train(module, data, args.steps, args.eval_every, recorder)
    trainable = sum(p.numel() for p in module.stacks.parameters() if p.requires_grad)
    return {"name": name, "curve": recorder.curve, "params": trainable, "ms_per_step": 1000 * sorted(recorder.step_times)[len(recorder.step_times) // 2]}


def run_boosting(args, data) -> dict:
    stack = StackConfig()
    rounds = []
    module = new_module(stack, args.lr)
    for round in range(3):
        module.stacks.add_stack(DOMAIN, round, seed=round)
        train(module, data, args.round_steps, args.eval_every, Recorder())
        module.stacks.freeze_stack()
        rounds.append(evaluate_loss(module.stacks, data.val_dataloader()))
    single = new_module(stack, args.lr)
    single.stacks.add_stack(DOMAIN, 0, seed=0)
    train(single, data, 3 * args.round_steps, args.eval_every, Recorder())
    return {"rounds": rounds, "single_stack_same_steps": evaluate_loss(single.stacks, data.val_dataloader())}


def first_step_reaching(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((step for step, loss in curve if loss <= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--round_steps", type=int, default=60)
    parser.add_argument("--eval_every", type=int, default=10)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = make_data(args)

    moe = run_curve("MoE-LoRA 4 x r16 top-2", StackConfig(), args, data)
    lora = run_curve("LoRA r64 (1 expert)", StackConfig(experts=1, rank=64, top_k=1, noise=False), args, data)
    lora_final = lora["curve"][-1][1]
    reach = first_step_reaching(moe["curve"], lora_final)
    boosting = run_boosting(args, data)

    result = {
        "setting": {"domain": DOMAIN, "base": "brainstacks-demo", "steps": args.steps, "round_steps": args.round_steps, "lr": args.lr, "batch": "8 x 192 tokens (packed)", "device": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": args.threads},
        "moe": moe,
        "lora": lora,
        "moe_reaches_lora_final_at_step": reach,
        "moe_reaches_lora_final_fraction": None if reach is None else reach / args.steps,
        "paper_fraction": 0.4,
        "time_per_step_ratio_moe_vs_lora": moe["ms_per_step"] / lora["ms_per_step"],
        "boosting": boosting,
        "paper_boosting": "0.8741 -> 0.8531 after 3 rounds (Gemma-3-12B)",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sft.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"{'step':>6} | {'MoE-LoRA val':>12} | {'LoRA r64 val':>12}")
    for (step, a), (_, b) in zip(moe["curve"], lora["curve"]):
        print(f"{step:>6} | {a:>12.4f} | {b:>12.4f}")
    print(f"params: MoE {moe['params']:,}  LoRA {lora['params']:,}")
    print(f"MoE-LoRA reaches LoRA's final loss {lora_final:.4f} at step {reach} ({'never' if reach is None else f'{reach / args.steps:.2f}'} of the steps; paper ~0.4)")
    print(f"time per step MoE / LoRA: {result['time_per_step_ratio_moe_vs_lora']:.3f}x")
    print("boosting: " + " -> ".join(f"{x:.4f}" for x in boosting["rounds"]) + f"   one stack, same total steps: {boosting['single_stack_same_steps']:.4f}")


if __name__ == "__main__":
    main()
