"""Pure scoring helpers: continuation log-likelihoods, choice selection, stop strings
(answer extraction is ``brainstacks_pl/answers.py``, shared with the GRPO rewards).

Log-likelihood of a continuation ``c_1..c_m`` given a context ``x``::

    log p(c | x) = sum_j log softmax(logits(x + c_<j))[c_j]         (``logprob``)
    mean per-token log-prob = log p(c | x) / m                        (what choices are ranked by)

Ranking choices by the mean rather than the sum keeps a long answer from losing just for
being long (lm-eval's ``acc_norm`` does the same with bytes). Everything here takes a
``logits_fn(input_ids [B, L], attention_mask [B, L], rows) -> logits [B, L, V]``, where
``rows`` lists which requests (indices into the caller's list) the batch rows are, so a
caller can route each row with its own weights; a hand-built ``nn.Module`` tests it exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "LogitsFn",
    "ContinuationScore",
    "encode_pair",
    "encode_prompt",
    "score_continuations",
    "pick_choice",
    "cut_at_stop",
]

LogitsFn = Callable[[Tensor, Tensor, list[int]], Tensor]


@dataclass(frozen=True)
class ContinuationScore:
    """Log-likelihood of one continuation given its context."""

    logprob: float
    """Sum of the continuation tokens' log-probabilities."""
    n_tokens: int
    """Number of continuation tokens scored."""
    is_greedy: bool
    """Every continuation token is the argmax of its position (lm-eval's ``is_greedy``)."""

    @property
    def mean_logprob(self) -> float:
        return self.logprob / max(self.n_tokens, 1)


def encode_pair(tokenizer, context: str, continuation: str, bos: bool = True) -> tuple[list[int], list[int]]:
    """Token ids of ``(context, continuation)`` split the way they are tokenized together.

    The pair is tokenized as one string and the continuation is what follows the context's own
    tokens (lm-eval's convention); trailing spaces of the context move to the continuation so a
    BPE that glues spaces to the next word sees the same words. ``bos`` prepends the BOS token
    (the SFT data starts every example with it; EOS stands in when there is none).
    """
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    return _head(tokenizer, bos) + whole[: len(ctx)], whole[len(ctx) :]


def encode_prompt(tokenizer, text: str, bos: bool = True) -> list[int]:
    """``[bos] + tokens(text)``: a generation prompt, exactly as written (spaces kept)."""
    return _head(tokenizer, bos) + tokenizer(text, add_special_tokens=False)["input_ids"]


def _head(tokenizer, bos: bool) -> list[int]:
    """BOS (EOS when the tokenizer has no BOS, as lm-eval does for an empty context)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return [token] if bos and token is not None else []


@torch.no_grad()
def score_continuations(
    logits_fn: LogitsFn,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 16,
    pad_id: int = 0,
    max_length: int | None = None,
    device: torch.device | str = "cpu",
) -> list[ContinuationScore]:
    """Score ``(context_ids, continuation_ids)`` pairs in right-padded batches, longest first.

    The model sees ``(context + continuation)[:-1]`` (cut from the left to ``max_length``) and
    the continuation tokens are read off the last ``m`` positions. A context must hold at least
    one token (give a BOS for an empty one). Results come back in the input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    seqs: list[tuple[list[int], int]] = []
    for ctx, cont in requests:
        if len(ctx) == 0 or len(cont) == 0:
            raise ValueError("every request needs >= 1 context token (e.g. BOS) and >= 1 continuation token")
        full = (list(ctx) + list(cont))[:-1]
        if max_length is not None:
            if len(cont) > max_length:
                raise ValueError(f"a continuation of {len(cont)} tokens does not fit the context of {max_length}")
            full = full[-max_length:]
        seqs.append((full, len(cont)))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    out: list[ContinuationScore | None] = [None] * len(seqs)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = len(seqs[chunk[0]][0])
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, : len(seqs[i][0])] = torch.as_tensor(seqs[i][0])
            mask[row, : len(seqs[i][0])] = 1
        logits = logits_fn(ids.to(device), mask.to(device), chunk)  # [b, W, V]
        for row, i in enumerate(chunk):
            length, m = len(seqs[i][0]), seqs[i][1]
            target = torch.as_tensor(list(requests[i][1]), device=logits.device)  # [m]
            logp = torch.log_softmax(logits[row, length - m : length].float(), dim=-1)  # [m, V]
            picked = logp.gather(1, target[:, None]).squeeze(1)  # [m]
            greedy = bool((logp.argmax(-1) == target).all())
            out[i] = ContinuationScore(float(picked.sum()), m, greedy)
    return out  # type: ignore[return-value]


def pick_choice(scores: Sequence[ContinuationScore], normalize: str = "mean") -> int:
    """Index of the best choice by mean per-token log-prob (``normalize="mean"``) or by sum."""
    if normalize not in ("mean", "sum"):
        raise ValueError(f"normalize must be 'mean' or 'sum', got {normalize!r}")
    values = [s.mean_logprob if normalize == "mean" else s.logprob for s in scores]
    return max(range(len(values)), key=values.__getitem__)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first of the ``stop`` strings (empty ones ignored)."""
    cut = min((text.index(s) for s in stop if s and s in text), default=len(text))
    return text[:cut]
