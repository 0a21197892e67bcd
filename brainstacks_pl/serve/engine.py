"""Continuous batching: one decode step at a time for every request in flight, each row routed to its own stacks.

    step t:   rows = requests in flight                 ids [B, 1], mask [B, L+1], one shared KV cache
              W[b, d] = request b's weight for domain d    (routed: gate + chat floor; pinned: 1; base: 0)
              y = base(x) + sum_{resident stacks s} W[b, d(s)] * stack_s(x)      (``stacks.routed(W)``)

Between two steps the engine admits waiting requests (their prompts run through the router in one
batch, then one prefill forward; their KV rows are left-padded into the shared cache, so every row's
tokens keep positions ``0..n-1``) and drops finished ones (their cache rows are removed and columns
that only padding uses are trimmed). A request joins at the next step and leaves when it is done.

Residency: the model holds the stacks of the union of the domains of the requests in flight
(``RoutedGenerator.load_domains``). A request whose domains are not in the host cache yet waits
while a loader thread reads and verifies the stack files; the batch keeps decoding meanwhile, and
the request joins at the first step after its stacks are in memory. A row's weight for a domain it
does not use is exactly 0, so extra resident stacks do not change its output.

The engine is the only thread that runs the model; the HTTP side submits ``Job`` objects and gets
their events back through ``Job.emit`` (``serve/jobs.py``). The model calls (prefill, decode
step, sampling) are in ``serve/decode.py``, the loader threads in ``serve/residency.py``; this
module is the queue, admission and routing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from torch import Tensor
from transformers import DynamicCache

from brainstacks_pl.generation import _forward_keywords
from brainstacks_pl.inference import InferenceError, RoutedGenerator
from brainstacks_pl.serve.decode import BatchDecoding
from brainstacks_pl.serve.jobs import Job, QueueFull, RouteInfo, ShuttingDown
from brainstacks_pl.serve.kv import check_cache
from brainstacks_pl.serve.residency import StackResidency
from brainstacks_pl.tokenization import pad_token_id

log = logging.getLogger(__name__)

__all__ = ["BatchEngine"]


class BatchEngine(BatchDecoding, StackResidency):
    """Decodes every submitted ``Job`` in one continuously re-formed batch on its own thread.

    Args:
        generator: Base, router, tokenizer and stack cache of the run.
        max_batch: Requests decoded together at most; more wait in the queue.
        max_queue: Requests waiting at most (router, stacks or a free batch slot); ``submit`` beyond
            it raises ``QueueFull``.
        fetch_domain: Reads one domain's stacks into the host cache; runs on a loader thread
            (default: ``load_into_cache``; a wrapper can add a policy, e.g. a download step).
        trace_steps: Keep the job ids of the last N decode steps in ``trace`` (diagnostics, tests).
    """

    def __init__(
        self,
        generator: RoutedGenerator,
        max_batch: int = 16,
        max_queue: int = 64,
        fetch_domain: Callable[[str], object] | None = None,
        trace_steps: int = 0,
    ):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"need max_batch >= 1 and max_queue >= 0, got {max_batch}, {max_queue}")
        self.generator, self.max_batch, self.max_queue = generator, max_batch, max_queue
        self.model = generator.stacks.model
        try:
            check_cache(DynamicCache(config=self.model.config))
        except NotImplementedError as err:
            raise InferenceError(f"{err}; this base model cannot be served with continuous batching") from None
        self.domains = list(generator.stacks.domains)
        self.stack_domains = list(dict.fromkeys(r.domain for r in generator.manifest.stacks))
        self.rounds = {d: [r.round for r in generator.manifest.stacks if r.domain == d] for d in self.stack_domains}
        tokenizer = generator.tokenizer
        self.eos = tokenizer.eos_token_id
        self.pad = pad_token_id(tokenizer)  # as generate pads
        self._cache_name, self._keep = _forward_keywords(self.model)
        self.tokenizer_lock = threading.Lock()
        """Held around every use of the tokenizer (HTTP threads encode and decode, the engine routes)."""
        self.fetch_domain = fetch_domain or self.load_into_cache
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._batch: list[Job] = []
        self._joining: list[Job] = []
        self._kv: DynamicCache | None = None
        self._mask: Tensor | None = None  # [B, L] 1 on each row's real tokens
        self._cache_lock = threading.Lock()  # the StackCache is not thread-safe: loader vs engine
        self._host_ready: set[str] = set()
        self._fetching: set[str] = set()
        self._fetch_errors: dict[str, str] = {}
        self._draining = self._stopped = False
        self._thread: threading.Thread | None = None
        self.steps = self.tokens_out = 0
        self.trace: deque[tuple[int, ...]] = deque(maxlen=trace_steps)

    # ------------------------------------------------------------------ HTTP side (any thread)
    def submit(self, job: Job) -> None:
        with self._cond:
            if self._draining:
                raise ShuttingDown("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(
                    f"{len(self._batch)} requests running and {len(self._waiting)} waiting "
                    f"(limit {self.max_queue}): retry later"
                )
            job.deadline = time.monotonic() + job.timeout if job.timeout else float("inf")
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Ask the engine to drop ``job`` at the next step (its client went away or stopped reading)."""
        job.cancelled = True
        with self._cond:
            self._cond.notify()

    def stats(self) -> dict:
        with self._cond:
            return {
                "running": len(self._batch),
                "waiting": len(self._waiting),
                "max_batch": self.max_batch,
                "max_queue": self.max_queue,
                "resident_domains": list(self.generator.loaded),
                "steps": self.steps,
                "tokens": self.tokens_out,
                "draining": self._draining,
            }

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="brainstacks-engine", daemon=True)
        self._thread.start()

    def drain(self) -> None:
        """Refuse new requests; those already submitted go on."""
        with self._cond:
            self._draining = True

    def close(self, timeout: float | None = None) -> None:
        """Stop: requests still waiting or running end with ``shutdown``; joins the thread."""
        with self._cond:
            self._draining = self._stopped = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the engine thread
    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    break
                if not self._batch and not self._admissible():
                    self._cond.wait(timeout=0.05)
                    self._expire_waiting()
                    continue
            try:
                self._admit()
                if self._batch:
                    self._step()
            except Exception as err:
                # a bug, a device error, an unreadable stack: fail the requests in flight, keep serving
                log.exception("decode step failed")
                for job in [*self._batch, *self._joining]:
                    self._end(job, f"error: {type(err).__name__}: {err}")
                self._batch, self._joining, self._kv, self._mask = [], [], None, None
        for job in [*self._batch, *self._waiting]:
            self._end(job, "shutdown")
        self._batch, self._waiting = [], deque()

    def _admissible(self) -> bool:
        """Whether some waiting job could make progress now (called with ``_cond`` held): to be
        dropped, routed, admitted, or to have a load started (or failed) for one of its domains."""
        return any(
            job.cancelled
            or job.info is None
            or job.domains <= self._host_ready
            or job.domains - self._host_ready - self._fetching
            for job in self._waiting
        )

    def _expire_waiting(self) -> None:
        now = time.monotonic()
        for job in [j for j in self._waiting if j.cancelled or j.deadline < now]:
            self._waiting.remove(job)
            self._end(job, "cancelled" if job.cancelled else "timeout")

    def _end(self, job: Job, reason: str) -> None:
        if not job.finished:
            job.finished = True
            job.emit(("end", reason))

    def _admit(self) -> None:
        with self._cond:
            self._expire_waiting()
            waiting = list(self._waiting)
        self._route([job for job in waiting if job.info is None])
        for job in waiting:
            failed = next((self._fetch_errors[d] for d in job.domains if d in self._fetch_errors), None)
            if failed:
                self._drop_waiting(job, f"error: {failed}")
            elif not job.domains <= self._host_ready:
                self._request_fetch(job.domains - self._host_ready)
        free = self.max_batch - len(self._batch)
        ready = [
            job for job in waiting if not job.finished and job.info is not None and job.domains <= self._host_ready
        ][:free]
        if not ready:
            return
        loaded = set(self.generator.loaded)
        wanted = set().union(*(job.domains for job in [*self._batch, *ready]))
        if wanted != loaded:
            if not self._cache_lock.acquire(blocking=False):  # the loader is reading a file: do not wait for it
                ready = [job for job in ready if job.domains <= loaded]
            else:
                try:
                    self.generator.load_domains(wanted)  # cache hits: these domains are in host memory
                finally:
                    self._cache_lock.release()
        if ready:
            with self._cond:
                for job in ready:
                    self._waiting.remove(job)
            self._joining = ready  # neither waiting nor in the batch until the prefill is done
            self._prefill(ready)
            self._joining = []

    def _drop_waiting(self, job: Job, reason: str) -> None:
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
        self._end(job, reason)

    def _route(self, jobs: list[Job]) -> None:
        """Decide the weights of newly submitted jobs (the router runs once for all routed ones)."""
        routed = [job for job in jobs if job.route.mode == "routed"]
        if routed:
            try:
                with self.tokenizer_lock:
                    decisions = self.generator.route([job.prompt for job in routed])
            except InferenceError as err:
                for job in routed:
                    self._drop_waiting(job, f"error: {err}")
                routed, decisions = [], []
            for job, decision in zip(routed, decisions):
                weights = {d: w for d, w in decision.weights.items() if w > 0 and d in self.rounds}
                rounds = {d: self.rounds[d] for d in weights}
                job.info = RouteInfo(
                    "routed", weights, rounds, decision.probs, decision.capability_gap, decision.novelty
                )
        for job in jobs:
            if job.route.mode != "routed":
                domains = self.stack_domains if job.route.mode == "ungated" else job.route.domains
                weights = {d: 1.0 for d in domains}
                job.info = RouteInfo(job.route.mode, weights, {d: self.rounds[d] for d in weights})
            if not job.finished:
                job.emit(("route", job.info))
