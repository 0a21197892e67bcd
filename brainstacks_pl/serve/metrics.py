"""``GET /metrics``: the server's counters in Prometheus' text format (``prometheus_client``).

Each app has its own ``CollectorRegistry``, not the process-wide default one, so two servers in
one process (the tests) keep separate counts. What is measured where:

    brainstacks_http_requests_total{route, status}     ASGI middleware, every response (401s included)
    brainstacks_prompt_tokens_total                    per accepted request
    brainstacks_completion_tokens_total                per token the engine decoded for a request
    brainstacks_time_to_first_token_seconds            arrival -> first token event, per choice
    brainstacks_inter_token_latency_seconds            between two token events of one choice
    brainstacks_requests_ended_total{reason}           stop, length, cancelled, timeout, shutdown, error
    brainstacks_router_decisions_total{domain}         routed requests that got a domain's stacks
    brainstacks_capability_gaps_total                  routed requests the base answered alone
    brainstacks_queue_depth, brainstacks_running_batch_size, brainstacks_stack_cache_{hits,loads}_total
                                                       read from the engine and its stack cache at scrape time

Latencies are taken where the HTTP side receives the engine's events, so they include the hop
from the engine thread to the event loop: what a client sees, less the network.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.requests import Request
from starlette.responses import Response

from brainstacks_pl.serve.jobs import RouteInfo

__all__ = ["ServeMetrics", "CountRequests"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _EngineCollector:
    """Gauges and counters that already live on the engine, read when Prometheus scrapes."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        stats, cache = self.engine.stats(), self.engine.generator.cache
        yield GaugeMetricFamily("brainstacks_queue_depth", "Requests waiting for a batch slot", stats["waiting"])
        yield GaugeMetricFamily("brainstacks_running_batch_size", "Requests in the decode batch", stats["running"])
        yield CounterMetricFamily("brainstacks_stack_cache_hits", "Stack files served from host memory", cache.hits)
        yield CounterMetricFamily("brainstacks_stack_cache_loads", "Stack files read from disk", cache.misses)


class ServeMetrics:
    """The metrics of one app, in a registry of its own."""

    def __init__(self, engine):
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "brainstacks_http_requests", "HTTP responses by route and status", ["route", "status"], registry=reg
        )
        self.prompt_tokens = Counter("brainstacks_prompt_tokens", "Prompt tokens of accepted requests", registry=reg)
        self.completion_tokens = Counter("brainstacks_completion_tokens", "Tokens decoded for requests", registry=reg)
        self.first_token = Histogram(
            "brainstacks_time_to_first_token_seconds", "Arrival to first token", buckets=_LATENCY_BUCKETS, registry=reg
        )
        self.inter_token = Histogram(
            "brainstacks_inter_token_latency_seconds", "Between two tokens", buckets=_LATENCY_BUCKETS, registry=reg
        )
        self.ended = Counter("brainstacks_requests_ended", "Decode jobs ended, by reason", ["reason"], registry=reg)
        self.decisions = Counter(
            "brainstacks_router_decisions", "Routed requests given a domain's stacks", ["domain"], registry=reg
        )
        self.gaps = Counter("brainstacks_capability_gaps", "Routed requests answered by the base alone", registry=reg)
        reg.register(_EngineCollector(engine))

    def routed(self, info: RouteInfo) -> None:
        if info.mode != "routed":
            return
        for domain in info.weights:
            self.decisions.labels(domain).inc()
        if info.capability_gap:
            self.gaps.inc()

    def end(self, reason: str) -> None:
        self.ended.labels("error" if reason.startswith("error: ") else reason).inc()

    async def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class CountRequests:
    """ASGI middleware counting every response by route and status; a path that is no route counts as
    ``other``, so a scan of random URLs cannot grow the label set."""

    def __init__(self, app, metrics: ServeMetrics, routes: frozenset[str]):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in self.routes else "other"

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
