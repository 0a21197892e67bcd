"""Quickstart: train, freeze, save and route one adapter stack in Python, in seconds on a CPU.

    python examples/quickstart.py

Uses the tiny demo base shipped inside the package (``brainstacks-demo``; nothing is
downloaded). The same steps scale to any Hugging Face causal LM: pass its hub id or path to
``BrainstacksModel.from_pretrained`` (``quantization="nf4"`` for a 4-bit base on a GPU).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import AutoTokenizer

from brainstacks_pl import BrainstacksModel, StackConfig, storage
from brainstacks_pl.assets import resolve_model_name
from brainstacks_pl.prompts import format_prompt
from brainstacks_pl.tokenization import pad_token_id

EXAMPLES = [("What is 12 times 7?", "12 x 7 = 84.\n#### 84"), ("What is 9 plus 15?", "9 + 15 = 24.\n#### 24")]


def encode(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """``[bos] + rendered prompt + answer + [eos]``; labels -100 on bos and the prompt."""
    prompt_ids = [tokenizer.bos_token_id] + tokenizer(format_prompt(prompt), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def batch(tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = [encode(tokenizer, p, a) for p, a in EXAMPLES]
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([ids + [pad_token_id(tokenizer)] * (length - len(ids)) for ids, _ in rows])  # [B, L]
    labels = torch.tensor([lab + [-100] * (length - len(lab)) for _, lab in rows])  # [B, L]
    attention_mask = (torch.arange(length)[None, :] < torch.tensor([[len(ids)] for ids, _ in rows])).long()  # [B, L]
    return input_ids, attention_mask, labels


def main(steps: int = 10, out_dir: str | None = None) -> dict[str, float]:
    torch.manual_seed(0)
    base = resolve_model_name("brainstacks-demo")  # the packaged demo base: a local directory
    tokenizer = AutoTokenizer.from_pretrained(base)
    config = StackConfig(experts=4, rank=8)
    stacks = BrainstacksModel.from_pretrained(base, config, ["chat", "math"])
    input_ids, attention_mask, labels = batch(tokenizer)

    stacks.add_stack("math")  # a new stack changes no output: its B starts at zero
    optimizer = torch.optim.AdamW([p for p in stacks.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for step in range(steps):
        out = stacks(input_ids, attention_mask, labels=labels)
        # The objective: the LM loss plus the load-balance loss scaled by aux_coeff (0.01).
        loss = out.loss + stacks.stack_config.aux_coeff * out.aux_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = out.loss.item() if first is None else first
        print(
            f"step {step}: loss {out.loss.item():.4f}  aux_loss {out.aux_loss.item():.3f} "
            f"(x {config.aux_coeff} = {config.aux_coeff * out.aux_loss.item():.4f})"
        )

    tensors = stacks.freeze_stack()  # frozen, half precision; returns the stack's tensors
    path = Path(out_dir or tempfile.mkdtemp()) / "math-r0.safetensors"
    sha256 = storage.save_tensors(path, tensors)  # (path, tensors): atomic write, returns the checksum
    print(f"saved {len(tensors)} tensors to {path} (sha256 {sha256[:12]}...)")

    stacks.eval()
    with torch.no_grad():
        with stacks.base_only():
            base_loss = stacks(input_ids, attention_mask, labels=labels).loss.item()
        with stacks.routed(torch.tensor([[0.0, 1.0], [0.0, 1.0]])):  # [batch, n_domains]: math on for both rows
            routed_loss = stacks(input_ids, attention_mask, labels=labels).loss.item()
    print(f"loss: base {base_loss:.4f}, routed to math {routed_loss:.4f}")
    return {"first_loss": first, "base_loss": base_loss, "routed_loss": routed_loss, "file": str(path)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    main(parser.parse_args().steps)
