r"""Null-space projection: the subspace earlier domains' stacks write into, and keeping out of it.

Brainstacks (arXiv 2604.01152), section "null-space projection". Before a new domain trains,
texts of the previous domains run through the model; for every stacked projection the frozen
stacks' output delta is averaged over each text's tokens, one row per text:

    D[i] = mean_{t in text i} sum_{s frozen} stack_s(x_t)          D: [n, d_out]

The top-K right singular vectors ``V`` ([d_out, K], orthonormal) of ``D`` span the directions
the earlier domains rely on. The new stack must not write into span(V):

    weight mode:   B_e <- B_e - V (V^T B_e)          (after every optimizer step)
    delta mode:    delta <- delta - (delta V) V^T     (every forward; folded into B at freeze)

Only ``V`` is ever stored, never the dense projector ``P = V V^T`` ([d_out, d_out]).

Solvers for ``V``:

* ``gram`` (exact): ``n`` (texts) is far smaller than ``d_out``, so the eigen-decomposition
  of the small Gram matrix ``G = D D^T`` ([n, n], float64) gives ``D = U S V^T`` with
  ``V = D^T U S^{-1}``; the columns are re-orthonormalised by a QR (rounding in the division
  by small singular values would otherwise leave them slightly non-orthogonal).
* ``randomized``: ``torch.svd_lowrank`` with ``q = K + oversample`` columns and ``niter``
  power iterations. The paper's ``q = K`` without oversampling loses energy on slowly
  decaying spectra; ``oversample >= 10`` is the Halko et al. recommendation.

Every function here is pure (tensors in, tensors out) except ``collect_frozen_deltas``,
which runs a model under ``no_grad`` with forward hooks that are removed before it returns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Principal",
    "collect_frozen_deltas",
    "principal_directions",
    "project_out",
    "leak",
    "energy_captured",
    "cosine_similarity_of_subspaces",
]

Solver = Literal["gram", "randomized"]


class Principal(NamedTuple):
    V: Tensor
    """[d_out, k'] orthonormal columns (float32), k' = min(k, numerical rank of D)."""
    singular_values: Tensor
    """[k'] the kept singular values of D, descending (float64)."""
    energy: float
    """Share of ||D||_F^2 that span(V) captures: sum(s_kept^2) / ||D||_F^2 (1.0 for D = 0)."""


# ---------------------------------------------------------------------------------------------- collection
@torch.no_grad()
def collect_frozen_deltas(
    stacks,
    dataloader: Iterable[dict[str, Tensor]],
    device: torch.device | str = "cpu",
    max_samples: int | None = None,
) -> dict[str, Tensor]:
    """Per layer, the frozen stacks' output delta averaged over each text's tokens: {layer: D [n, d_out]}.

    ``stacks`` is a ``BrainstacksModel``; every frozen stack takes part (ungated routing) and an
    active stack, if any, is ignored. Batches come from ``dataloader`` (dicts with ``input_ids``
    and ``attention_mask``, right- or left-padded); padding is masked out of the mean, so the
    rows do not depend on the batch size. A forward hook on each ``StackedLinear`` reads the
    layer's input and computes its frozen delta; the hooks are removed in ``finally``.
    """
    rows: dict[str, list[Tensor]] = {name: [] for name in stacks.layers}
    state: dict[str, Tensor] = {}

    def make_hook(name: str):
        def hook(layer, args, output) -> None:
            delta = layer.frozen_delta(args[0])  # [B, T, d_out] or None without frozen stacks
            if delta is None:
                delta = output.new_zeros(output.shape)
            mask = state["mask"]  # [B, T], float32
            summed = torch.einsum("btd,bt->bd", delta.float(), mask)  # [B, d_out]
            rows[name].append(summed / state["count"])  # masked mean over tokens

        return hook

    was_training = stacks.training
    stacks.eval()
    handles = [layer.register_forward_hook(make_hook(name)) for name, layer in stacks.layers.items()]
    seen = 0
    try:
        with stacks.ungated():
            for batch in dataloader:
                if max_samples is not None and seen >= max_samples:
                    break
                input_ids = batch["input_ids"].to(device)  # [B, T]
                attention_mask = batch.get("attention_mask")
                attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
                take = input_ids.shape[0] if max_samples is None else min(input_ids.shape[0], max_samples - seen)
                input_ids, attention_mask = input_ids[:take], attention_mask[:take]
                state["mask"] = attention_mask.float()
                state["count"] = state["mask"].sum(1, keepdim=True).clamp_min(1.0)  # [B, 1]
                stacks(input_ids, attention_mask)
                seen += take
    finally:
        for handle in handles:
            handle.remove()
        stacks.train(was_training)
    if seen == 0:
        raise ValueError("collect_frozen_deltas got no texts: the dataloader is empty")
    return {name: torch.cat(parts).cpu() for name, parts in rows.items()}


# ---------------------------------------------------------------------------------------------- solvers
def _rank_cut(singular_values: Tensor, shape: tuple[int, int], float_eps: float) -> int:
    """Numerical rank: singular values above ``max(shape) * eps * s_max`` (numpy's matrix_rank rule)."""
    if singular_values.numel() == 0 or singular_values[0] <= 0:
        return 0
    tol = max(shape) * float_eps * singular_values[0]
    return int((singular_values > tol).sum())


def _orthonormalise(V: Tensor) -> Tensor:
    """QR with the signs fixed so that each column keeps the direction it came in with."""
    Q, R = torch.linalg.qr(V)  # [d, k], [k, k]
    signs = torch.sign(torch.diagonal(R))
    signs[signs == 0] = 1.0
    return Q * signs  # [d, k]


def principal_directions(
    D: Tensor,
    k: int,
    solver: Solver = "gram",
    oversample: int = 10,
    niter: int = 2,
) -> Principal:
    """Top-``k`` right singular vectors of ``D`` ([n, d]) as an orthonormal ``V`` ([d, k']).

    ``gram`` is exact (float64 eigen-decomposition of ``D D^T``); ``randomized`` runs
    ``torch.svd_lowrank`` with ``q = k + oversample`` (capped at min(n, d)) and ``niter`` power
    iterations. ``k' = min(k, rank(D))``: directions with (numerically) zero singular value
    carry nothing to protect and would only take capacity from the new stack.
    """
    if D.dim() != 2:
        raise ValueError(f"D must be [n, d_out], got shape {tuple(D.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n, d = D.shape
    D64 = D.detach().to(torch.float64)
    total = float((D64 * D64).sum())
    if total == 0.0:
        return Principal(D.new_zeros(d, 0, dtype=torch.float32), D64.new_zeros(0), 1.0)
    if solver == "gram":
        gram = D64 @ D64.T  # [n, n]
        eigenvalues, U = torch.linalg.eigh(gram)  # ascending
        eigenvalues, U = eigenvalues.flip(0).clamp_min(0.0), U.flip(1)
        # eigenvalues are s^2: the rank rule on them, then s = sqrt.
        keep = min(k, _rank_cut(eigenvalues, (n, n), torch.finfo(torch.float64).eps))
        s = eigenvalues[:keep].sqrt()  # [k']
        V = (D64.T @ U[:, :keep]) / s  # [d, k'] = D^T U S^-1
    elif solver == "randomized":
        q = min(k + oversample, n, d)
        # float32 is enough here: the power iterations re-orthonormalise (QR) after every product.
        _, S, Vq = torch.svd_lowrank(D.detach().float(), q=q, niter=niter)  # S [q], Vq [d, q]
        S, Vq = S.double(), Vq.double()
        keep = min(k, _rank_cut(S, (n, d), torch.finfo(torch.float32).eps))
        s, V = S[:keep], Vq[:, :keep]  # [k'], [d, k'], orthonormal already (Q_basis @ V_small)
    else:
        raise ValueError(f"solver must be 'gram' or 'randomized', got {solver!r}")
    V = _orthonormalise(V) if keep and solver == "gram" else V
    energy = float((s * s).sum()) / total
    return Principal(V.to(torch.float32).contiguous(), s, min(energy, 1.0))


# ---------------------------------------------------------------------------------------------- projections
def project_out(B: Tensor, V: Tensor) -> Tensor:
    """``B - V (V^T B)``: ``B`` ([d_out, m]) with its component in span(V) ([d_out, K]) removed."""
    if V.numel() == 0:
        return B
    V = V.to(B.dtype)
    return B - V @ (V.T @ B)  # [d_out, m]


def leak(B: Tensor, V: Tensor) -> float:
    """``||V^T B||_F / ||B||_F``: the share of ``B`` that still writes into span(V) (0 for B = 0)."""
    if V.numel() == 0:
        return 0.0
    B64, V64 = B.detach().double(), V.detach().double()
    norm = float(torch.linalg.matrix_norm(B64))
    return float(torch.linalg.matrix_norm(V64.T @ B64)) / norm if norm > 0 else 0.0


def energy_captured(D: Tensor, V: Tensor) -> float:
    """``||D V||_F^2 / ||D||_F^2``: the share of the rows' energy inside span(V) (V orthonormal)."""
    D64 = D.detach().double()
    total = float((D64 * D64).sum())
    if total == 0.0:
        return 1.0
    if V.numel() == 0:
        return 0.0
    projected = D64 @ V.detach().double()  # [n, K]
    return float((projected * projected).sum()) / total


def cosine_similarity_of_subspaces(V1: Tensor, V2: Tensor) -> float:
    """Mean squared cosine of the principal angles between span(V1) and span(V2), in [0, 1].

    ``||V1^T V2||_F^2 / min(k1, k2)``: 1 when the smaller subspace lies inside the larger one,
    0 when they are orthogonal; two random subspaces of R^d score ``max(k1, k2) / d`` in expectation.
    """
    k = min(V1.shape[1], V2.shape[1])
    if k == 0:
        return math.nan
    overlap = V1.detach().double().T @ V2.detach().double()  # [k1, k2]
    return float((overlap * overlap).sum()) / k
