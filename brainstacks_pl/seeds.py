"""Seeds derived from a run's ``seed``: one function, so every use draws from its own stream.

A derived seed is a function of ``(seed, purpose, parts)`` only, never of the global RNG or of the
order things ran in, so a resumed run, another rank and a later phase derive the same one.
"""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed"]


def derive_seed(seed: int, purpose: str, *parts: int) -> int:
    """The seed of ``purpose`` (``"stack"``, ``"gating-noise"``, ``"rollout"``) at ``parts``
    (domain index, round, epoch, step, rank...): the first 63 bits of blake2b over them.

    Unlike a linear mix (``seed * 1_000_003 + part * c``, a constant per use), two purposes or two
    parts never share a seed (all three uses were 0 at seed 0), however large a part grows; 63
    bits suit ``torch.Generator.manual_seed`` on every device."""
    key = repr((int(seed), purpose, *(int(part) for part in parts))).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 1
