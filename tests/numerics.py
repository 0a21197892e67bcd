"""Tolerances for comparing float32 results against float64 references, derived from magnitudes.

A float32 result that accumulates ``depth`` rounded products differs from the exact value by at
most about ``depth * eps32 * M``, where ``M`` bounds the size of the summands. We take ``M`` as
the largest magnitude in the float64 reference tensor (its scale) and a safety factor of 4, so
the bound holds whatever order a CPU's kernels (AVX2, AVX-512, NEON; 1 or 2 threads) sum in,
while a real defect (a wrong scale, a missing expert, a dropped gradient path) is off by a
fraction of ``M`` itself, orders of magnitude above it.
"""

from __future__ import annotations

import torch

EPS32 = torch.finfo(torch.float32).eps


def fp32_tolerance(reference: torch.Tensor, depth: int, safety: float = 4.0) -> float:
    """Absolute tolerance for a float32 tensor computed through ``depth`` accumulations."""
    scale = float(reference.detach().abs().max()) if reference.numel() else 0.0
    return safety * depth * EPS32 * max(scale, 1e-30)


def assert_matches_float64(actual: torch.Tensor, reference: torch.Tensor, depth: int, what: str = "") -> None:
    """``actual`` (any float dtype) within the float32 rounding bound of a float64 ``reference``."""
    assert reference.dtype == torch.float64, "the reference must be computed in float64"
    tol = fp32_tolerance(reference, depth)
    err = float((actual.detach().double() - reference.detach()).abs().max()) if reference.numel() else 0.0
    assert err <= tol, f"{what}: max |fp32 - fp64| = {err:.3e} > tolerance {tol:.3e} (depth {depth})"
