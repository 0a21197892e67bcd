"""NullSpaceProjection: keep a new domain's stack out of the subspace earlier domains write into.

Two roles (see ``brainstacks_pl/nullspace.py`` for the math and docs/nullspace.md):

* **domain hook** (``on_domain_start``, called by the curriculum driver before a domain's first
  round): collect the frozen stacks' output deltas over texts of the previous domains, take
  the top-``k`` directions ``V`` per layer, hand them to the model (``set_null_space``), save
  them with the run (``RUN/null_space/<domain>.safetensors``, listed in the manifest) and log
  what was measured. A resumed run re-reads the saved file (checksum verified) instead of
  recomputing, so a domain's rounds are always projected against the same ``V``.
* **Lightning callback**: in ``weight`` mode, after every optimizer step, ``B_e <- B_e - V V^T B_e``
  for every expert of the active stack; at the end of each round, the leak
  ``||V^T B|| / ||B||`` of the new stack is logged (``delta`` mode folds the projection into B
  when the stack freezes, see ``StackedLinear.freeze_active``).

Why ``on_train_batch_end`` gated on ``trainer.global_step``: ``global_step`` counts optimizer
steps, so the projection runs exactly once after each step, also with gradient accumulation
(where most batches do not step). ``on_before_zero_grad`` is the wrong hook in Lightning 2.x:
``zero_grad`` runs inside the *next* step's closure, after that batch's ``training_step``, so
the next forward would see the unprojected B and the last step of a round would never be
projected. The per-step cost is two ``[d_out, K] x [d_out, E*r]`` products per layer.

The basis files are read and written in ``nullspace_files.py``, the measurements logged in
``nullspace_report.py``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from brainstacks_pl.callbacks.nullspace_files import load_saved_basis, save_basis
from brainstacks_pl.callbacks.nullspace_report import log_report
from brainstacks_pl.layers.dtensor import full_tensor
from brainstacks_pl.nullspace import (
    collect_frozen_deltas,
    cosine_similarity_of_subspaces,
    leak,
    principal_directions,
    project_out,
)
from brainstacks_pl.phase import DomainStart
from brainstacks_pl.storage import atomic_write_json

log = logging.getLogger(__name__)

__all__ = ["NullSpaceProjection"]


class NullSpaceProjection(Callback):
    """Null-space projection of each new domain's stacks against the earlier domains' outputs.

    Args:
        mode: ``weight`` projects every expert's B after each optimizer step (the stack can
            never write into span(V)); ``delta`` projects the stack's output in every forward and
            folds the projection into B at freeze (the paper's training dynamics); ``off`` disables it.
        n_samples: Texts of the previous domains (split evenly between them) whose frozen-stack
            deltas define V; fewer are used when the domains have fewer.
        k: Directions protected per layer (columns of V); fewer when the deltas have lower rank.
        solver: ``gram``: exact, float64 eigendecomposition of the small Gram matrix D D^T;
            ``randomized``: ``torch.svd_lowrank`` with ``k + oversample`` columns.
        oversample: Extra columns of the randomized solver (the paper's 0 loses energy).
        niter: Power iterations of the randomized solver.
        source: Which split of the previous domains to collect over (``val`` or ``train``).
        batch_size: Texts per forward pass while collecting (None: the data module's eval batch size).
    """

    def __init__(
        self,
        mode: Literal["weight", "delta", "off"] = "weight",
        n_samples: int = 400,
        k: int = 64,
        solver: Literal["gram", "randomized"] = "gram",
        oversample: int = 10,
        niter: int = 2,
        source: Literal["val", "train"] = "val",
        batch_size: int | None = None,
    ):
        if mode not in ("weight", "delta", "off"):
            raise ValueError(f"null_space.mode must be 'weight', 'delta' or 'off', got {mode!r}")
        if solver not in ("gram", "randomized"):
            raise ValueError(f"null_space.solver must be 'gram' or 'randomized', got {solver!r}")
        if source not in ("val", "train"):
            raise ValueError(f"null_space.source must be 'val' or 'train', got {source!r}")
        if n_samples < 1 or k < 1:
            raise ValueError(f"null_space.n_samples and null_space.k must be >= 1, got {n_samples} and {k}")
        self.mode, self.n_samples, self.k, self.solver = mode, n_samples, k, solver
        self.oversample, self.niter, self.source, self.batch_size = oversample, niter, source, batch_size
        self.run = None  # RunDirectory, set by on_domain_start
        self.domain: str | None = None
        self._projected_at_step: int | None = None
        self._round: tuple[str, int] | None = None
        self._trained_leak: dict[str, float] = {}

    # ------------------------------------------------------------------ the domain hook
    def on_domain_start(self, start: DomainStart) -> None:
        """Compute (or re-read) V for ``start.domain`` from the previous domains and install it."""
        stacks, domain = start.stacks, start.domain
        self.run, self.domain = start.run, domain
        if self.mode == "off" or not start.previous_domains or not stacks.frozen_stacks:
            stacks.set_null_space({}, self.mode)
            return
        bases = load_saved_basis(start.run, domain, stacks, self.k, self.solver)
        if bases is None:
            bases, report = self.compute(stacks, start.datamodule, start.previous_domains, start.device)
            save_basis(start.run, domain, bases, report, self.k, self.solver, self.source)
            log_report(start.logger, domain, start.domain_index, report)
        stacks.set_null_space(bases, self.mode)

    def compute(self, stacks, datamodule, previous: list[str], device) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Bases {layer: V} over texts of ``previous`` domains, and the measurements made on the way."""
        started = time.monotonic()
        rows: dict[str, list[Tensor]] = {name: [] for name in stacks.layers}
        counts = {}
        for i, name in enumerate(previous):  # n_samples split evenly, the remainder to the first
            limit = self.n_samples // len(previous) + (1 if i < self.n_samples % len(previous) else 0)
            if limit == 0:
                continue
            loader = datamodule.text_dataloader(name, split=self.source, limit=limit, batch_size=self.batch_size)
            deltas = collect_frozen_deltas(stacks, loader, device, max_samples=limit)
            for layer, D in deltas.items():
                rows[layer].append(D)
            counts[name] = next(iter(deltas.values())).shape[0]
        collected = time.monotonic()
        bases, layers = {}, {}
        for layer, parts in rows.items():
            principal = principal_directions(torch.cat(parts), self.k, self.solver, self.oversample, self.niter)
            bases[layer] = principal.V
            per_domain = [principal_directions(D, self.k, "gram").V for D in parts]
            layers[layer] = {
                "rank": principal.V.shape[1],
                "energy": principal.energy,
                "singular_values": principal.singular_values.tolist(),
                "cross_domain_similarity": [
                    [cosine_similarity_of_subspaces(a, b) for b in per_domain] for a in per_domain
                ],
            }
        report = {
            "mode": self.mode,
            "k": self.k,
            "solver": self.solver,
            "source": self.source,
            "domains": list(counts),
            "rows": counts,
            "collect_seconds": round(collected - started, 4),
            "solve_seconds": round(time.monotonic() - collected, 4),
            "layers": layers,
        }
        full = [name for name, entry in layers.items() if entry["rank"] >= stacks.layers[name].d_out // 2]
        if full:
            log.warning(
                "null space protects half or more of the output space of %d layers (e.g. %s): lower null_space.k",
                len(full),
                full[0],
            )
        return bases, report

    # ------------------------------------------------------------------ the Lightning callback
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stacks = getattr(pl_module, "stacks", None)
        info = getattr(stacks, "active_info", None)
        self._round = (info.domain, info.round) if info is not None else None
        self._projected_at_step = trainer.global_step
        # A round resumed from a checkpoint is not projected again: its B was projected after its
        # last step, and projecting twice is not bit-exact (V^T B is ~1e-8, not 0), so a resumed run
        # would drift from an uninterrupted one. A fresh round's B is zero (a no-op, kept for clarity).
        if trainer.global_step == 0:
            self.project_active(pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step != self._projected_at_step:  # an optimizer step happened
            self._projected_at_step = trainer.global_step
            self.project_active(pl_module)

    def project_active(self, pl_module: L.LightningModule) -> None:
        """``B_e <- B_e - V (V^T B_e)`` for every layer's active stack (weight mode only)."""
        stacks = getattr(pl_module, "stacks", None)
        if self.mode != "weight" or stacks is None:
            return
        for layer in stacks.layers.values():
            if layer.active is not None and layer.null_basis.numel():
                layer.active.project_out_(layer.null_basis)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The trained B before any fold: in delta mode, what projecting only the forward pass
        # (the paper's code) would leave inside span(V) at inference.
        self._trained_leak = self.stack_leaks(pl_module, fold=False)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        leaks = self.stack_leaks(pl_module, fold=True)
        if not leaks or self._round is None:
            return
        domain, round = self._round
        summary = {"max": max(leaks.values()), "mean": float(np.mean(list(leaks.values())))}
        if self._trained_leak:
            summary["trained_max"] = max(self._trained_leak.values())
        # The stored B is rounded to the storage dtype: bf16 alone leaves a leak of order 1e-3.
        tolerance = max(1e-5, torch.finfo(getattr(torch, pl_module.stacks.stack_config.frozen_dtype)).eps)
        if summary["max"] > tolerance:
            log.warning(
                "%s round %d: the frozen stack leaks %.2e of its norm into the protected subspace",
                domain,
                round,
                summary["max"],
            )
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {f"null_space/leak_{key}/{domain}": value for key, value in summary.items()}, step=round
            )
        self._record_leak(domain, round, summary)

    def stack_leaks(self, pl_module: L.LightningModule, fold: bool) -> dict[str, float]:
        """Per layer ``||V^T B|| / ||B||`` of the round's stack: the active one (projected as freezing
        would when ``fold`` and delta mode) or, once frozen, the last frozen one as stored."""
        stacks = getattr(pl_module, "stacks", None)
        if stacks is None or self.mode == "off":
            return {}
        leaks = {}
        for name, layer in stacks.layers.items():
            V = layer.null_basis
            if not V.numel():
                continue
            if layer.active is not None:
                B = full_tensor(layer.active.B.detach())
                B = project_out(B, V) if fold and self.mode == "delta" else B
            elif layer.num_frozen:
                B = layer.frozen_Bt[-1].T  # [d_out, E*r], storage precision
            else:
                continue
            leaks[name] = leak(B, V)
        return leaks

    def _record_leak(self, domain: str, round: int, summary: dict[str, float]) -> None:
        if self.run is None or not self.run.is_writer:
            return
        path = Path(self.run.null_space_path(domain)).with_suffix(".json")
        if path.is_file():
            data = json.loads(path.read_text())
            data.setdefault("leak", {})[f"r{round}"] = summary
            atomic_write_json(path, data)
