"""Stack residency for ``BatchEngine``: reading a domain's stack files into the host cache on a
loader thread of its own, so the batch keeps decoding while a request waits for its stacks.

A mixin of the engine: it shares the engine's condition (``_cond``) and its bookkeeping of
domains that are in host memory (``_host_ready``), being read (``_fetching``) or failed
(``_fetch_errors``).
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

__all__ = ["StackResidency"]


class StackResidency:
    """Loader threads of ``BatchEngine`` (see ``serve/engine.py`` for the state they share)."""

    def _request_fetch(self, domains: set[str]) -> None:
        for domain in domains - self._fetching:
            self._fetching.add(domain)
            threading.Thread(
                target=self._fetch_one, args=(domain,), name=f"brainstacks-load-{domain}", daemon=True
            ).start()

    def load_into_cache(self, domain: str) -> None:
        """Read and verify ``domain``'s stack files into the generator's host cache (thread-safe)."""
        with self._cache_lock:
            self.generator.cache.domain_stacks(domain)

    def _fetch_one(self, domain: str) -> None:
        try:
            self.fetch_domain(domain)
        except Exception as err:  # a corrupt or missing stack file: the requests that need it fail, others go on
            log.error("loading the stacks of %s failed: %s", domain, err)
            self._fetch_errors[domain] = f"stacks of {domain!r} could not be loaded: {err}"
        else:
            self._host_ready.add(domain)
        with self._cond:
            self._fetching.discard(domain)
            self._cond.notify()
