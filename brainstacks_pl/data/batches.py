"""From examples to batches: tokenize (labels only on the response), pack, pad, shuffle by epoch.

Kept apart from the DataModule so the router, the evaluation and the alignment data reuse the
same encoding of ``[bos] + format_prompt(prompt) + response + eos``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Sampler

from brainstacks_pl.data.formats import Example
from brainstacks_pl.prompts import DEFAULT_PROMPT_TEMPLATE, format_prompt, prompt_head

__all__ = [
    "Encoded",
    "EpochShuffleSampler",
    "ExampleRows",
    "PackedRows",
    "PadCollator",
    "encode_examples",
    "pack_encoded",
]


@dataclass
class Encoded:
    """Token ids of N examples stored flat: example i is ``ids[offsets[i]:offsets[i + 1]]``."""

    ids: torch.Tensor  # [T] int64
    labels: torch.Tensor  # [T] int64, -100 outside the response
    offsets: torch.Tensor  # [N + 1] int64
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def item(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.ids[lo:hi], self.labels[lo:hi]


def _prompt_lengths(tokenizer, prompts: list[str], fulls: list[str]) -> tuple[list[list[int]], list[int]]:
    """Tokenize prompt+response jointly; the boundary is the first token starting in the response."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(fulls, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        bounds = [sum(1 for start, _ in offs if start < len(p)) for p, offs in zip(prompts, offsets)]
        return enc["input_ids"], bounds
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer([f[len(p) :] for p, f in zip(prompts, fulls)], add_special_tokens=False)["input_ids"]
    return [a + b for a, b in zip(p_ids, r_ids)], [len(a) for a in p_ids]


def encode_examples(
    tokenizer,
    examples: Sequence[Example],
    max_seq_len: int,
    template: str = DEFAULT_PROMPT_TEMPLATE,
    chunk: int = 1024,
) -> Encoded:
    """``[bos] + format_prompt(prompt) + response + eos``; labels are -100 on bos and the prompt.

    An example longer than ``max_seq_len`` keeps bos, the end of its prompt (at least half the
    budget when the prompt is that long) and the start of its response; ``truncated`` counts them.
    """
    eos = tokenizer.eos_token_id
    head = prompt_head(tokenizer, template)
    tail = [eos] if eos is not None else []
    budget = max_seq_len - len(head)
    ids_out, labels_out, lengths, truncated = [], [], [], 0
    for start in range(0, len(examples), chunk):
        part = examples[start : start + chunk]
        prompts = [format_prompt(ex.prompt, template, tokenizer) for ex in part]
        ids, bounds = _prompt_lengths(tokenizer, prompts, [p + ex.response for p, ex in zip(prompts, part)])
        for seq, b in zip(ids, bounds):
            p, r = seq[:b], seq[b:] + tail
            if len(p) + len(r) > budget:
                truncated += 1
                keep = max(budget - len(r), min(len(p), budget // 2))
                p, r = p[len(p) - keep :], r[: budget - keep]
            ids_out.extend(head + p + r)
            labels_out.extend([-100] * (len(head) + len(p)) + r)
            lengths.append(len(head) + len(p) + len(r))
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
    offsets[1:] = torch.tensor(lengths, dtype=torch.long).cumsum(0)
    ids = torch.tensor(ids_out, dtype=torch.long)
    labels = torch.tensor(labels_out, dtype=torch.long)
    return Encoded(ids, labels, offsets, truncated)


def pack_encoded(encoded: Encoded, max_seq_len: int, pad_id: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Concatenate the examples (in a seeded order) and cut rows of exactly ``max_seq_len``.

    Every row is full except the last, whose tail is padding (attention 0, labels -100).
    Attention crosses example boundaries inside a row (no per-document mask).
    """
    order = list(range(len(encoded)))
    random.Random(seed).shuffle(order)
    ids = torch.cat([encoded.item(i)[0] for i in order])  # [T]
    labels = torch.cat([encoded.item(i)[1] for i in order])  # [T]
    rows = -(-len(ids) // max_seq_len)
    pad = rows * max_seq_len - len(ids)
    mask = torch.ones(rows * max_seq_len, dtype=torch.long)
    if pad:
        ids = torch.cat([ids, ids.new_full((pad,), pad_id)])
        labels = torch.cat([labels, labels.new_full((pad,), -100)])
        mask[-pad:] = 0
    shape = (rows, max_seq_len)
    return {"input_ids": ids.view(shape), "attention_mask": mask.view(shape), "labels": labels.view(shape)}


class PackedRows(Dataset):
    def __init__(self, rows: dict[str, torch.Tensor]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return self.rows["input_ids"].shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.rows.items()}


class ExampleRows(Dataset):
    def __init__(self, encoded: Encoded, limit: int | None = None) -> None:
        self.encoded, self.n = encoded, len(encoded) if limit is None else min(limit, len(encoded))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids, labels = self.encoded.item(i)
        return {"input_ids": ids, "labels": labels}


class PadCollator:
    """Right-pad a list of ``{"input_ids", "labels"[, "attention_mask"]}`` to the longest row."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if "attention_mask" in items[0]:  # packed rows: already equal length
            return {k: torch.stack([it[k] for it in items]) for k in items[0]}
        length = max(len(it["input_ids"]) for it in items)
        batch = {
            "input_ids": torch.full((len(items), length), self.pad_id, dtype=torch.long),  # [B, L]
            "attention_mask": torch.zeros((len(items), length), dtype=torch.long),  # [B, L]
            "labels": torch.full((len(items), length), -100, dtype=torch.long),  # [B, L]
        }
        for row, it in enumerate(items):
            n = len(it["input_ids"])
            batch["input_ids"][row, :n] = it["input_ids"]
            batch["attention_mask"][row, :n] = 1
            batch["labels"][row, :n] = it["labels"]
        return batch


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(length)`` drawn from ``torch.Generator().manual_seed(seed + epoch)``."""

    def __init__(self, length: int, seed: int = 0) -> None:
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length
