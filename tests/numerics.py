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


TINY_MODEL_DEPTH = 512
"""Accumulation depth of one forward through conftest's tiny Llama with stacks (2 layers x
(hidden 32 + intermediate 64 + positions <= 64 + stack ranks 64), rounded up): the depth to
use when two float32 forwards of that model are compared."""


def assert_fp32_equivalent(actual, expected, depth: int, what: str = "") -> None:
    """Two float32 computations of the same quantity in different orders (batched vs one at a
    time, fused vs reference): each within ``fp32_tolerance`` of the exact value, so of each other
    within twice that. Takes tensors, floats or sequences of floats."""
    actual_t = torch.as_tensor(actual, dtype=torch.float64)
    expected_t = torch.as_tensor(expected, dtype=torch.float64)
    assert actual_t.shape == expected_t.shape, f"{what}: shapes {tuple(actual_t.shape)} vs {tuple(expected_t.shape)}"
    tol = 2 * fp32_tolerance(expected_t, depth)
    err = float((actual_t - expected_t).abs().max()) if expected_t.numel() else 0.0
    assert err <= tol, f"{what}: max difference {err:.3e} > tolerance {tol:.3e} (depth {depth})"
