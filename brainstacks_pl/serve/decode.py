"""Model calls of ``BatchEngine``: one left-padded prefill forward for the requests that join,
one decode step for every request in flight, each row routed by its own weights, and the
sampling that emits each row's token and retires finished rows from the shared KV cache.

A mixin of the engine: it owns no state of its own; the batch (``_batch``), the shared cache
(``_kv``, ``_mask``) and the counters live on the engine.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor
from transformers import DynamicCache

from brainstacks_pl.generation import pad_left
from brainstacks_pl.serve.jobs import Job, next_token
from brainstacks_pl.serve.kv import merge_rows, select_rows

__all__ = ["BatchDecoding"]


class BatchDecoding:
    """Prefill, decode step and token acceptance of ``BatchEngine``."""

    def _weights(self, jobs: list[Job]) -> Tensor:
        rows = [[job.info.weights.get(d, 0.0) for d in self.domains] for job in jobs]
        return torch.tensor(rows, dtype=torch.float32, device=self.generator.device)  # [B, n_domains]

    @torch.no_grad()
    def _forward(self, jobs: list[Job], ids: Tensor, mask: Tensor, positions: Tensor, kv: DynamicCache) -> Tensor:
        with self.generator.stacks.routed(self._weights(jobs)):
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **self._keep,
                **{self._cache_name: kv},
            )
        return out.logits[:, -1].float()  # [B, V]

    def _prefill(self, jobs: list[Job]) -> None:
        """Run the new jobs' prompts (one left-padded forward), sample their first token, merge their KV rows."""
        device = self.generator.device
        ids, mask = pad_left([job.ids for job in jobs], self.pad)
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        kv = DynamicCache()
        logits = self._forward(jobs, ids, mask, positions, kv)
        context = self.generator.context_length
        for job in jobs:
            job.limit = min(job.sampling.max_tokens, context - len(job.ids)) if context else job.sampling.max_tokens
            job.rng = (
                torch.Generator(device=device).manual_seed(job.sampling.seed)
                if job.sampling.temperature > 0 and job.sampling.seed is not None
                else None
            )
            if job.rng is None and job.sampling.temperature > 0:
                job.rng = torch.Generator(device=device)
                job.rng.seed()
        if self._kv is None:
            self._kv, self._mask = kv, mask
        else:
            self._kv, self._mask = merge_rows(self._kv, self._mask, kv, mask)
        self._batch.extend(jobs)
        self._accept(jobs, logits)

    def _step(self) -> None:
        """One token for every job in the batch."""
        device = self.generator.device
        ids = torch.tensor([[job.tokens[-1]] for job in self._batch], device=device)  # [B, 1]
        self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], 1)  # [B, L+1]
        positions = self._mask.sum(1, keepdim=True) - 1  # [B, 1]: real tokens before this one
        logits = self._forward(self._batch, ids, self._mask, positions, self._kv)
        if self.trace.maxlen:
            self.trace.append(tuple(job.id for job in self._batch))
        self.steps += 1
        self._accept(self._batch, logits)

    def _accept(self, jobs: list[Job], logits: Tensor) -> None:
        """Sample one token per job from its row of ``logits`` [len(jobs), V], emit it, retire finished jobs."""
        greedy = logits.argmax(-1).tolist()  # one host sync for all greedy rows
        now = time.monotonic()
        for row, job in enumerate(jobs):
            if job.cancelled or job.deadline < now:
                self._end(job, "cancelled" if job.cancelled else "timeout")
                continue
            token = greedy[row] if job.sampling.temperature == 0 else next_token(logits[row], job.sampling, job.rng)
            if token == self.eos:
                self._end(job, "stop")
                continue
            job.tokens.append(token)
            self.tokens_out += 1
            job.emit(("token", token))
            if len(job.tokens) >= job.limit:
                self._end(job, "length")
        keep = [i for i, job in enumerate(self._batch) if not job.finished]
        if len(keep) < len(self._batch):
            self._batch = [self._batch[i] for i in keep]
            if keep:
                self._kv, self._mask = select_rows(self._kv, self._mask, keep)
            else:
                self._kv, self._mask = None, None
