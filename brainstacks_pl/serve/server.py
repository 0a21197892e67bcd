"""``brainstacks serve --run RUN``: load the run once, then serve it over HTTP until SIGTERM / Ctrl-C.

    brainstacks serve --run runs/demo --port 8000
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "demo", "messages": [{"role": "user", "content": "What is 12 times 7?"}]}'

Shutdown: on SIGTERM (or SIGINT) uvicorn stops accepting connections, requests in flight run to
their end for up to ``--shutdown_timeout`` seconds, then the rest are cancelled, the engine stops
and the command exits 0.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from brainstacks_pl.errors import UserError

__all__ = ["run", "bind", "build", "launch", "api_keys"]

KEYS_VARIABLE = "BRAINSTACKS_API_KEYS"
"""Environment variable with comma-separated API keys (so keys need not appear in ``ps`` output)."""

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a user error naming the address (port 0 picks a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def api_keys(args: argparse.Namespace) -> tuple[str, ...]:
    """The keys of ``--api_key`` (each comma-separated) and of ``$BRAINSTACKS_API_KEYS``, in order, once each."""
    given = [*(args.api_key or []), os.environ.get(KEYS_VARIABLE, "")]
    return tuple(dict.fromkeys(key.strip() for text in given for key in text.split(",") if key.strip()))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def _check_args(args: argparse.Namespace) -> None:
    if not _is_loopback(args.host) and not api_keys(args) and not args.allow_unauthenticated:
        raise UserError(
            f"--host {args.host} is reachable from other machines and no API key is set: "
            f"give --api_key KEY (or ${KEYS_VARIABLE}), or --allow_unauthenticated to serve it open"
        )
    for name, minimum in (
        ("max_batch", 1),
        ("max_queue", 0),
        ("max_tokens", 1),
        ("request_timeout", 0.001),
        ("max_body_mb", 0.0001),
        ("shutdown_timeout", 0),
        ("threads", 0),
    ):
        if getattr(args, name) is not None and getattr(args, name) < minimum:
            raise UserError(f"--{name} must be >= {minimum}, got {getattr(args, name)}")


def build(args: argparse.Namespace):
    """The generator, engine and ASGI app for parsed ``serve`` arguments."""
    import torch

    from brainstacks_pl.inference import RoutedGenerator
    from brainstacks_pl.serve.app import ServeSettings, create_app
    from brainstacks_pl.serve.engine import BatchEngine

    if args.threads:
        torch.set_num_threads(args.threads)
    generator = RoutedGenerator.from_run(
        args.run,
        device=args.device,
        model_name_or_path=args.model_name_or_path,
        dtype=args.dtype,
        cache_bytes=None if args.cache_mb is None else int(args.cache_mb * 2**20),
        accept_new_base=args.accept_new_base,
        gap_threshold=args.gap_threshold,
    )
    engine = BatchEngine(generator, max_batch=args.max_batch, max_queue=args.max_queue)
    settings = ServeSettings(
        name=args.served_name or Path(args.run).resolve().name,
        max_tokens=args.max_tokens,
        max_body_bytes=int(args.max_body_mb * 2**20),
        request_timeout=args.request_timeout,
        api_keys=api_keys(args),
    )
    return engine, create_app(engine, settings), settings


def _note_signal(signum, frame) -> None:
    """Installed before uvicorn, which restores it and re-raises the signal into it after a graceful
    shutdown: the signal has been handled, so the command then exits 0 instead of dying of it."""


def run(args: argparse.Namespace) -> int:
    try:
        import pydantic  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise UserError(
            f"brainstacks serve needs the 'serve' extra ({err.name} is missing): pip install -e \".[serve]\""
        ) from None
    import uvicorn

    _check_args(args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    sock = bind(args.host, args.port)
    engine, app, settings = build(args)
    host, port = sock.getsockname()[:2]
    log.info(
        "serving %s on http://%s:%d/v1 (models: %s, %s:base, %s:DOMAIN+DOMAIN ...)",
        args.run,
        host,
        port,
        settings.name,
        settings.name,
        settings.name,
    )
    if settings.api_keys:
        log.info("API key required on every route but /health (%d keys)", len(settings.api_keys))
    config = uvicorn.Config(
        app, log_level=args.log_level, timeout_graceful_shutdown=args.shutdown_timeout, lifespan="on"
    )
    server = uvicorn.Server(config)
    previous = {sig: signal.signal(sig, _note_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    log.info("stopped after %d decode steps, %d tokens", engine.steps, engine.tokens_out)
    return 0


def launch(
    run_dir: str | Path, options: Sequence[str] = (), timeout: float = 300.0
) -> tuple[subprocess.Popen, str, list[str]]:
    """Start ``brainstacks serve --run RUN --port 0 OPTIONS`` in a subprocess running this copy of
    the package; returns it (stderr piped, text) once ``/health`` answers, its base URL and the
    stderr lines read so far."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    argv = [sys.executable, "-m", "brainstacks_pl", "serve", "--run", str(run_dir), "--port", "0", *options]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    log: list[str] = []
    for line in proc.stderr:
        log.append(line)
        found = re.search(r"serving .* on (http://[^/]+)/v1", line)
        if found:
            url = found.group(1)
            break
    else:
        raise RuntimeError(f"brainstacks serve exited with {proc.wait()} before listening:\n{''.join(log[-20:])}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5):
                return proc, url, log
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"brainstacks serve at {url} did not answer /health") from None
            time.sleep(0.05)
