"""Held-out math numbers of a run directory, with and without its GRPO stack (docs/alignment.md).

    python scripts/alignment_demo_eval.py runs/grpo_demo --out benchmarks/results/alignment_demo_eval.json

On the GRPO phase's own held-out prompts (``PromptDataModule`` with the config's split), for the
SFT policy (every stack but the GRPO ones) and the GRPO policy (all stacks):

* greedy exact match, overall and per level (``level`` column of ``math_rl.jsonl``);
* under sampling (``--group-size`` completions at ``--temperature``, as GRPO trains): the mean
  exact match, pass@G, and the share of groups with *signal* (some but not all samples right):
  a group where every sample scores the same has zero advantage and teaches GRPO nothing;
* where the failures come from: the share of the prompt's numbers a sample uses
  (``math_operands_reward``), and the exact match of the samples that used all of them (is the
  policy wrong because it copies the wrong quantities, or because it cannot do the arithmetic?).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

from brainstacks_pl.config import StackConfig
from brainstacks_pl.data.rl_prompts import PromptDataModule
from brainstacks_pl.generation import generate
from brainstacks_pl.model import BrainstacksModel
from brainstacks_pl.rewards import math_exact_match, math_operands_reward
from brainstacks_pl.storage import Manifest, load_tensors


def load_policy(run_dir: Path, phases: set[str]) -> BrainstacksModel:
    """Base + the run's stacks whose phase is in ``phases``, ungated, in eval mode."""
    manifest = Manifest.load(run_dir)
    stacks = BrainstacksModel.from_pretrained(
        manifest.base_model_id, StackConfig.from_dict(manifest.stack_config), list(manifest.domains)
    )
    for record in manifest.stacks:
        if record.phase in phases:
            tensors, _ = load_tensors(run_dir / record.file, expected_sha256=record.sha256)
            stacks.load_frozen_stack(tensors, record.domain, record.round)
    return stacks.eval()


@torch.no_grad()
def measure(
    stacks: BrainstacksModel,
    data: PromptDataModule,
    max_new_tokens: int,
    group_size: int,
    temperature: float,
    seed: int,
) -> dict:
    tok = data.tokenizer
    greedy, sampled, passed, signal, count = defaultdict(list), [], [], [], 0
    operands, right_given_operands = [], []  # sampled: share of prompt numbers used; EM where all were
    generator = torch.Generator().manual_seed(seed)
    for batch in data.val_dataloader():
        ids, mask, answers = batch["input_ids"], batch["attention_mask"], batch["columns"]["answer"]
        levels = batch["columns"].get("level", [0] * len(answers))
        out = generate(stacks.model, ids, mask, max_new_tokens, None, None, tok.eos_token_id, data.pad_id)
        texts = [
            tok.decode(r[m.bool()].tolist(), skip_special_tokens=True)
            for r, m in zip(out.sequences[:, ids.shape[1] :], out.completion_mask)
        ]
        for level, score in zip(levels, math_exact_match([], texts, answers)):
            greedy["all"].append(score)
            greedy[f"level{level}"].append(score)
        g = group_size
        out = generate(
            stacks.model,
            ids.repeat_interleave(g, 0),
            mask.repeat_interleave(g, 0),
            max_new_tokens,
            temperature,
            generator,
            tok.eos_token_id,
            data.pad_id,
        )
        texts = [
            tok.decode(r[m.bool()].tolist(), skip_special_tokens=True)
            for r, m in zip(out.sequences[:, ids.shape[1] :], out.completion_mask)
        ]
        scores = torch.tensor(math_exact_match([], texts, [a for a in answers for _ in range(g)])).view(-1, g)  # [N, G]
        used = math_operands_reward([p for p in batch["prompts"] for _ in range(g)], texts)
        operands.extend(used)
        right_given_operands.extend(float(s) for s, u in zip(scores.flatten().tolist(), used) if u == 1.0)
        sampled.extend(scores.mean(1).tolist())
        passed.extend((scores.max(1).values > 0).float().tolist())
        signal.extend((scores.min(1).values < scores.max(1).values).float().tolist())
        count += len(answers)

    def mean(xs: list) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    return {
        "prompts": count,
        "greedy_exact_match": {k: mean(v) for k, v in sorted(greedy.items())},
        "greedy_counts": {k: len(v) for k, v in sorted(greedy.items())},
        f"sampled_T{temperature}_exact_match": mean(sampled),
        f"pass_at_{group_size}": mean(passed),
        f"groups_with_signal_G{group_size}": mean(signal),
        "sampled_operands_used": mean(operands),
        "sampled_all_operands_right": round(len(right_given_operands) / max(1, len(operands)), 4),
        "sampled_exact_match_given_all_operands_right": mean(right_given_operands),
    }


CURVES = (
    "train/reward",
    "train/reward/math_exact_match",
    "train/reward/math_operands_reward",
    "train/kl",
    "train/clip_fraction",
    "val/reward",
    "val/reward/math_exact_match",
)


def curves(run_dir: Path) -> dict[str, list[list[float]]]:
    """The phase's TensorBoard scalars in ``CURVES`` as ``[[step, value], ...]``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    return {tag: [[e.step, round(e.value, 4)] for e in events.Scalars(tag)] for tag in CURVES if tag in tags}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", default="demo:math_rl")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--max-val-examples", type=int, default=80)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--group-size", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    manifest = Manifest.load(args.run_dir)
    data = PromptDataModule(
        path=args.data,
        tokenizer=manifest.base_model_id,
        val_fraction=args.val_fraction,
        max_val_examples=args.max_val_examples,
        eval_batch_size=16,
    )
    data.setup("fit")
    phases = {r.phase for r in manifest.stacks}
    results = {
        "run_dir": str(args.run_dir),
        "data": args.data,
        "settings": {k: v for k, v in vars(args).items() if k not in ("run_dir", "out")},
    }
    policies = {"sft": phases - {"grpo", "dpo"}}
    if "grpo" in phases:
        policies["grpo"] = phases - {"dpo"}
    for name, include in policies.items():
        results[name] = measure(
            load_policy(args.run_dir, include), data, args.max_new_tokens, args.group_size, args.temperature, args.seed
        )
    grpo = [r for r in manifest.stacks if r.phase == "grpo"]
    if grpo:
        record = grpo[-1]
        results["grpo_phase"] = {
            "summary": [a for a in manifest.extra.get("alignment", []) if a["phase"] == "grpo"][-1],
            "steps": record.steps,
            "train_seconds": record.train_seconds,
            "val_losses": record.val_losses,
            "curves": curves(args.run_dir),
        }
    text = json.dumps(results, indent=2, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
