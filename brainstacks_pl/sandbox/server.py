"""A code-execution service for ``RemoteExecutor``: ``python -m brainstacks_pl.sandbox.server``.

Runs jobs with an executor of this machine (the isolated one by default) behind the HTTP
protocol in ``remote.py``, so that model-written code runs on another machine than the trainer
(a throwaway VM, a host without credentials or the run directory). Limits asked for by a client
are capped by the server's ``--max-*`` options; at most ``--workers`` jobs run at once.

    python -m brainstacks_pl.sandbox.server --host 0.0.0.0 --port 8977 --token-env SANDBOX_TOKEN
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
from dataclasses import fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from brainstacks_pl.auth import bearer_matches
from brainstacks_pl.sandbox.base import Executor, Job, Limits, default_workers
from brainstacks_pl.sandbox.registry import get_executor

log = logging.getLogger(__name__)

__all__ = ["SERVER_MAX_LIMITS", "make_server", "main"]

SERVER_MAX_LIMITS = Limits(
    timeout=60.0,
    memory_mb=4096,
    file_mb=64,
    scratch_mb=256,
    scratch_inodes=65536,
    max_processes=256,
    max_open_files=256,
    max_output=1 << 20,
    max_value_bytes=16 << 20,
)
MAX_BODY = 64 << 20
MAX_JOBS = 256


def clamp(asked: Limits, most: Limits) -> Limits:
    """``asked`` with every field at most ``most``'s."""
    changes = {}
    for f in fields(Limits):
        value, cap = getattr(asked, f.name), getattr(most, f.name)
        if f.name == "cpu_seconds":
            value = min(asked.cpu, most.cpu)
        elif value > cap:
            value = cap
        changes[f.name] = value
    return replace(asked, **changes)


def make_server(
    host: str,
    port: int,
    executor: Executor,
    token: str | None = None,
    workers: int | None = None,
    max_limits: Limits = SERVER_MAX_LIMITS,
) -> ThreadingHTTPServer:
    """A started-by-the-caller HTTP server (``serve_forever``) running jobs with ``executor``."""
    slots = threading.BoundedSemaphore(workers or default_workers())

    class Slotted(Executor):
        name, isolated = executor.name, executor.isolated

        def run(self, job, limits=Limits()):
            with slots:
                return executor.run(job, limits)

    slotted = Slotted()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # through logging, not stderr
            log.info("%s %s", self.address_string(), fmt % args)

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if not token:
                return True
            if bearer_matches(self.headers.get("Authorization"), [token]):
                return True
            self._send(401, {"error": "missing or wrong bearer token"})
            return False

        def do_GET(self) -> None:
            if not self._authorized():
                return
            if self.path != "/v1/health":
                return self._send(404, {"error": f"no such endpoint {self.path}"})
            self._send(
                200,
                {
                    "ok": True,
                    "executor": executor.name,
                    "isolated": executor.isolated,
                    "max_limits": max_limits.to_dict(),
                },
            )

        def do_POST(self) -> None:
            if not self._authorized():
                return
            if self.path != "/v1/run":
                return self._send(404, {"error": f"no such endpoint {self.path}"})
            try:
                size = int(self.headers.get("Content-Length", "0"))
                if not 0 < size <= MAX_BODY:
                    return self._send(413, {"error": f"body must be 1..{MAX_BODY} bytes"})
                body = json.loads(self.rfile.read(size))
                jobs = [Job.from_dict(j) for j in body["jobs"]]
                if len(jobs) > MAX_JOBS:
                    return self._send(413, {"error": f"at most {MAX_JOBS} jobs per request"})
                limits = clamp(Limits.from_dict(body.get("limits") or {}), max_limits)
            except (KeyError, TypeError, ValueError) as err:
                return self._send(400, {"error": f"bad request: {err}"})
            results = slotted.run_many(jobs, limits, max_workers=workers or default_workers())
            self._send(200, {"results": [r.to_dict() for r in results]})

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8977)
    parser.add_argument("--executor", default="local", help="local (isolated, default) or unisolated")
    parser.add_argument("--workers", type=int, default=None, help="jobs run at once (default: CPUs, at most 16)")
    parser.add_argument(
        "--token-env", default=None, help="environment variable with the bearer token clients must send"
    )
    parser.add_argument("--max-timeout", type=float, default=SERVER_MAX_LIMITS.timeout)
    parser.add_argument("--max-memory-mb", type=int, default=SERVER_MAX_LIMITS.memory_mb)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    executor = get_executor(args.executor)
    executor.check()
    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and not token:
        parser.error(f"--token-env {args.token_env}: the variable is not set")
    server = make_server(
        args.host,
        args.port,
        executor,
        token,
        args.workers,
        replace(SERVER_MAX_LIMITS, timeout=args.max_timeout, memory_mb=args.max_memory_mb),
    )
    log.info(
        "serving %s executor on http://%s:%d (token %s)",
        executor.name,
        args.host,
        server.server_address[1],
        "required" if token else "not required",
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
