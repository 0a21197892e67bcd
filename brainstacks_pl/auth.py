"""Bearer-token checks shared by the two HTTP services: ``brainstacks serve`` and the sandbox server.

    bearer_matches("Bearer k2", ["k1", "k2"])  -> True

Every key is compared, with no early exit, and the comparison is ``hmac.compare_digest`` over
SHA-256 digests, so neither the time taken nor its dependence on lengths tells a client which key
(or how much of one) it got right.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

__all__ = ["bearer_matches"]


def bearer_matches(header: str | None, keys: Iterable[str]) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <key>`` for one of ``keys``."""
    given = hashlib.sha256((header or "").encode()).digest()
    matched = False
    for key in keys:
        expected = hashlib.sha256(f"Bearer {key}".encode()).digest()
        matched |= hmac.compare_digest(given, expected)  # no short-circuit: every key costs the same
    return matched
