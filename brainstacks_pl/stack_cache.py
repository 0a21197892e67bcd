"""Stack files -> tensors in host memory, under a byte budget (least recently used evicted first).

Routed inference (``inference.RoutedGenerator``) and the HTTP server read stacks only when a
request routes to their domain; this cache is what makes a second request for the same domain
cost no I/O. Every load is verified against the manifest's checksum and shapes.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

from torch import Tensor

from brainstacks_pl.errors import InferenceError
from brainstacks_pl.storage import Manifest, StackRecord, load_tensors

log = logging.getLogger(__name__)

__all__ = ["StackCache"]


class StackCache:
    """Stack files -> tensors, LRU under ``budget_bytes`` of host memory (None: unbounded).

    The budget counts the bytes of the cached tensors (storage precision, as in the file).
    A stack larger than the whole budget is returned but not kept.
    """

    def __init__(self, run_root: str | Path, manifest: Manifest, budget_bytes: int | None = None):
        self.root, self.manifest, self.budget_bytes = Path(run_root), manifest, budget_bytes
        self._entries: OrderedDict[str, tuple[dict[str, Tensor], int]] = OrderedDict()
        self.hits = self.misses = self.evictions = 0
        self.loads: dict[str, int] = {}
        self._shapes = manifest.stack_shapes()

    @property
    def bytes_used(self) -> int:
        return sum(size for _, size in self._entries.values())

    @property
    def cached_files(self) -> list[str]:
        return list(self._entries)

    def get(self, record: StackRecord) -> dict[str, Tensor]:
        if record.file in self._entries:
            self._entries.move_to_end(record.file)
            self.hits += 1
            return self._entries[record.file][0]
        self.misses += 1
        tensors, _ = load_tensors(self.root / record.file, expected_sha256=record.sha256, expected_shapes=self._shapes)
        self.loads[record.file] = self.loads.get(record.file, 0) + 1
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self.budget_bytes is not None and size > self.budget_bytes:
            log.warning(
                "stack %s (%d bytes) exceeds the cache budget (%d bytes); not cached",
                record.file,
                size,
                self.budget_bytes,
            )
            return tensors
        while self.budget_bytes is not None and self._entries and self.bytes_used + size > self.budget_bytes:
            self._entries.popitem(last=False)
            self.evictions += 1
        self._entries[record.file] = (tensors, size)
        return tensors

    def domain_stacks(self, domain: str) -> list[tuple[dict[str, Tensor], str, int]]:
        """Every stack of ``domain`` (all its boosting rounds) as ``(tensors, domain, round)``."""
        records = [r for r in self.manifest.stacks if r.domain == domain]
        if not records:
            raise InferenceError(f"{self.root}: the run has no stacks for domain {domain!r}")
        return [(self.get(r), r.domain, r.round) for r in records]
