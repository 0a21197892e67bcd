"""The HTTP routes: OpenAI's chat and text completions (plain and server-sent events), models, health, metrics.

Each choice of a completion request (``n`` of them) becomes one ``Job`` for the ``BatchEngine``;
the engine's events come back to the event loop through one ``asyncio.Queue`` per request.
Responses carry an extra ``brainstacks`` object (the OpenAI clients keep unknown fields:
``response.brainstacks`` / ``response.model_extra``):

    "brainstacks": {"mode": "routed", "stacks": [{"domain": "math", "weight": 0.83, "rounds": [0, 1]}],
                    "capability_gap": false, "router_probs": {"chat": 0.07, "math": 0.83, ...},
                    "novelty": 3.1}

With ``ServeSettings.api_keys`` set, every route but ``/health`` needs ``Authorization: Bearer KEY``
(401 ``invalid_api_key`` otherwise; the check is ``brainstacks_pl.auth.bearer_matches``).

Statuses: 400 bad request (OpenAI's error shape, ``param`` names the field), 429 queue full,
503 shutting down, 504 request timeout, 500 a failure while decoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as HttpRoute

from brainstacks_pl.auth import bearer_matches
from brainstacks_pl.inference import InferenceError
from brainstacks_pl.serve.engine import BatchEngine
from brainstacks_pl.serve.jobs import Job, QueueFull, Sampling, ShuttingDown
from brainstacks_pl.serve.metrics import CountRequests, ServeMetrics
from brainstacks_pl.serve.reply import Reply
from brainstacks_pl.serve.schema import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    chat_prompt,
    model_ids,
    parse_request,
    resolve_model,
)

__all__ = ["ServeSettings", "create_app"]


@dataclass
class ServeSettings:
    name: str
    """The model name clients use (the run directory's name by default)."""
    max_tokens: int = 256
    """Default and upper bound of ``max_tokens`` per request."""
    max_body_bytes: int = 1 << 20
    """Larger request bodies are refused with 400 before they are parsed."""
    request_timeout: float = 300.0
    """Seconds from arrival until a request still waiting or decoding ends with 504 / a timeout event."""
    completion_default_tokens: int = 16
    """``max_tokens`` of /v1/completions when the request leaves it out (OpenAI's default)."""
    api_keys: tuple[str, ...] = ()
    """Bearer keys clients must send on every route but ``/health``; empty: no key needed."""


def _error(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


_END_ERRORS = {
    "timeout": (504, "timeout_error", "the request did not finish within the server's request timeout"),
    "shutdown": (503, "server_error", "the server shut down before the request finished"),
}


def _end_error(reason: str) -> ApiError | None:
    if reason in _END_ERRORS:
        status, kind, message = _END_ERRORS[reason]
        return ApiError(status, message, type=kind, code=reason)
    if reason.startswith("error: "):
        return ApiError(500, reason.removeprefix("error: "), type="server_error")
    return None


class _RequireKey:
    """ASGI middleware: 401 in OpenAI's shape unless the request carries one of ``keys``.

    Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``, which would wrap every response
    (streams included) in a task of its own and hide the client's disconnect from the routes."""

    def __init__(self, app, keys: tuple[str, ...], open_paths: frozenset[str] = frozenset({"/health"})):
        self.app, self.keys, self.open_paths = app, keys, open_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and self.keys and scope["path"] not in self.open_paths:
            if not bearer_matches(Headers(scope=scope).get("authorization"), self.keys):
                message = "Incorrect or missing API key: send 'Authorization: Bearer KEY'"
                response = _error(ApiError(401, message, code="invalid_api_key"))
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Handler:
    """The routes, bound to one engine."""

    def __init__(self, engine: BatchEngine, settings: ServeSettings, metrics: ServeMetrics):
        self.engine, self.settings, self.metrics = engine, settings, metrics
        self.has_router = engine.generator.router is not None
        self.created = int(time.time())

    # ------------------------------------------------------------------ plumbing
    async def _body(self, request: Request) -> object:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(
                400,
                f"the request body is {int(declared)} bytes; this server accepts at most {limit} (--max_body_mb)",
                code="request_too_large",
            )
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise ApiError(
                    400,
                    f"the request body is over {limit} bytes; this server accepts at most {limit} (--max_body_mb)",
                    code="request_too_large",
                )
        try:
            return json.loads(data)
        except ValueError as err:
            raise ApiError(400, f"the request body is not valid JSON: {err}") from None

    def _encode(self, prompt: str, param: str) -> list[int]:
        with self.engine.tokenizer_lock:
            try:
                return self.engine.generator.encode(prompt)
            except InferenceError as err:
                raise ApiError(
                    400, f"{param}: {err}", param, "context_length_exceeded" if "context" in str(err) else None
                ) from None

    def _decode(self, tokens: list[int]) -> str:
        with self.engine.tokenizer_lock:
            return self.engine.generator.tokenizer.decode(tokens, skip_special_tokens=True)

    async def _jobs(self, req, prompt: str, param: str, default_tokens: int) -> list[Job]:
        """One job per choice (``n``); with a ``seed``, choice ``i`` draws from ``seed + i``, so the
        choices differ and each is reproducible."""
        route = resolve_model(req.model, self.settings.name, self.engine.stack_domains, self.has_router)
        max_tokens = req.requested_tokens() or min(default_tokens, self.settings.max_tokens)
        if max_tokens > self.settings.max_tokens:
            raise ApiError(
                400,
                f"max_tokens={max_tokens} is above this server's limit {self.settings.max_tokens} (--max_tokens)",
                "max_tokens",
            )
        ids = await asyncio.to_thread(self._encode, prompt, param)  # a long prompt must not hold up the event loop
        return [
            Job(
                prompt,
                ids,
                route,
                Sampling(max_tokens, req.temperature, req.top_p, None if req.seed is None else req.seed + i),
                emit=lambda event: None,
                timeout=self.settings.request_timeout,
            )
            for i in range(req.n)
        ]

    def _submit(self, jobs: list[Job]) -> asyncio.Queue:
        """Submit every job; their events arrive on one queue as ``(choice index, kind, value)``."""
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def sink(index: int):
            def emit(event) -> None:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, (index, *event))
                except RuntimeError:  # the loop is closed: nobody is listening any more
                    pass

            return emit

        for index, job in enumerate(jobs):
            job.emit = sink(index)
            try:
                self.engine.submit(job)
            except (QueueFull, ShuttingDown) as err:
                for submitted in jobs[:index]:  # all choices or none
                    self.engine.cancel(submitted)
                if isinstance(err, QueueFull):
                    raise ApiError(429, str(err), type="rate_limit_error", code="rate_limit_exceeded") from None
                raise ApiError(503, str(err), type="server_error", code="shutting_down") from None
        return queue

    async def _events(
        self, jobs: list[Job], queue: asyncio.Queue, arrival: float
    ) -> AsyncIterator[tuple[int, str, object]]:
        """The jobs' events until every one has ended (those left are cancelled if the caller stops
        early), measured."""
        metrics, last, seen, open_jobs = self.metrics, [arrival] * len(jobs), [0] * len(jobs), len(jobs)
        metrics.prompt_tokens.inc(len(jobs[0].ids))
        try:
            while open_jobs:
                index, kind, value = event = await queue.get()
                if kind == "token":
                    now = time.monotonic()
                    (metrics.inter_token if seen[index] else metrics.first_token).observe(now - last[index])
                    last[index], seen[index] = now, seen[index] + 1
                    metrics.completion_tokens.inc()
                elif kind == "route":
                    metrics.routed(value)
                elif kind == "end":
                    metrics.end(value)
                    open_jobs -= 1
                yield event
        finally:
            for job in jobs:
                if not job.finished:
                    self.engine.cancel(job)

    # ------------------------------------------------------------------ routes
    async def models(self, request: Request) -> Response:
        ids = model_ids(self.settings.name, self.engine.stack_domains, self.has_router)
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": i, "object": "model", "created": self.created, "owned_by": "brainstacks"} for i in ids],
            }
        )

    async def health(self, request: Request) -> Response:
        stats = self.engine.stats()
        status = 503 if stats.pop("draining") else 200
        return JSONResponse(
            {"status": "ok" if status == 200 else "shutting_down", "model": self.settings.name, **stats},
            status_code=status,
        )

    async def chat(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    async def _complete(self, request: Request, chat: bool) -> Response:
        arrival = time.monotonic()
        try:
            body = await self._body(request)
            if chat:
                req = parse_request(ChatRequest, body)
                prompt, param, default = chat_prompt(req.messages), "messages", self.settings.max_tokens
            else:
                req = parse_request(CompletionRequest, body)
                prompt, param, default = req.text(), "prompt", self.settings.completion_default_tokens
            jobs = await self._jobs(req, prompt, param, default)
            queue = self._submit(jobs)
        except ApiError as err:
            return _error(err)
        reply = Reply(chat, req.model, req.stops(), self._decode, len(jobs[0].ids), len(jobs))
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                self._stream(jobs, queue, arrival, reply, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        watcher = asyncio.create_task(self._cancel_on_disconnect(request, jobs))
        try:
            return await self._full(jobs, queue, arrival, reply)
        finally:
            watcher.cancel()

    async def _cancel_on_disconnect(self, request: Request, jobs: list[Job]) -> None:
        """Cancel ``jobs`` once their client has gone away. The body has been read, so the next ASGI
        message is ``http.disconnect``, which the server sends when the connection closes; without
        this, a non-streaming request would decode to ``max_tokens`` for nobody."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        for job in jobs:
            self.engine.cancel(job)

    def _token(self, jobs: list[Job], reply: Reply, index: int, token: int) -> None:
        if reply.feed(index, token):
            self.engine.cancel(jobs[index])  # a stop string: the engine drops the row at its next step

    async def _full(self, jobs: list[Job], queue: asyncio.Queue, arrival: float, reply: Reply) -> Response:
        async with contextlib.aclosing(self._events(jobs, queue, arrival)) as events:
            async for index, kind, value in events:
                if kind == "route":
                    reply.info = reply.info or value
                elif kind == "token":
                    self._token(jobs, reply, index, value)
                elif kind == "end":
                    reply.choices[index].end = value
                    err = _end_error(value) if not reply.choices[index].stream.stopped else None
                    if err is not None:
                        return _error(err)  # one choice failed: the request fails, the others are cancelled
        return JSONResponse(reply.full())

    async def _stream(
        self, jobs: list[Job], queue: asyncio.Queue, arrival: float, reply: Reply, include_usage: bool
    ) -> AsyncIterator[str]:
        failed = False
        async with contextlib.aclosing(self._events(jobs, queue, arrival)) as events:
            async for index, kind, value in events:
                if kind == "route":
                    reply.info = reply.info or value
                    yield _sse(reply.chunk(index, role=True))
                elif kind == "token":
                    self._token(jobs, reply, index, value)
                    delta = reply.take(index)
                    if delta:
                        yield _sse(reply.chunk(index, text=delta))
                elif kind == "end":
                    choice = reply.choices[index]
                    choice.end = value
                    err = _end_error(value) if not choice.stream.stopped else None
                    if err is not None:
                        failed = True
                        yield _sse(err.body())
                        break  # closing the events cancels the other choices
                    yield _sse(reply.chunk(index, text=choice.stream.flush(), finish=choice.finish_reason()))
        if include_usage and not failed:
            yield _sse(reply.usage_chunk())
        yield "data: [DONE]\n\n"


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def create_app(engine: BatchEngine, settings: ServeSettings) -> Starlette:
    """The ASGI app; its lifespan starts the engine and, at shutdown, closes it (requests still in
    flight after uvicorn's graceful-shutdown timeout end with ``shutdown``)."""
    metrics = ServeMetrics(engine)
    handler = _Handler(engine, settings, metrics)

    async def not_found(request: Request, exc: HTTPException) -> Response:
        return _error(
            ApiError(
                exc.status_code,
                f"{request.method} {request.url.path}: {exc.detail}",
                code="not_found" if exc.status_code == 404 else None,
            )
        )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.drain()
            await asyncio.to_thread(engine.close, 30.0)

    routes = [
        HttpRoute("/v1/chat/completions", handler.chat, methods=["POST"]),
        HttpRoute("/v1/completions", handler.completions, methods=["POST"]),
        HttpRoute("/v1/models", handler.models, methods=["GET"]),
        HttpRoute("/health", handler.health, methods=["GET"]),
        HttpRoute("/metrics", metrics.endpoint, methods=["GET"]),
    ]
    middleware = [
        Middleware(CountRequests, metrics=metrics, routes=frozenset(r.path for r in routes)),  # 401s count too
        Middleware(_RequireKey, keys=tuple(settings.api_keys)),
    ]
    return Starlette(
        routes=routes, middleware=middleware, exception_handlers={HTTPException: not_found}, lifespan=lifespan
    )
