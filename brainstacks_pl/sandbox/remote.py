"""``RemoteExecutor``: jobs run by a code-execution service over HTTP.

Protocol (JSON, version 1), served by ``python -m brainstacks_pl.sandbox.server`` and easy to
put in front of any other sandbox (a container pool, gVisor, Firecracker, a cloud service):

    GET  {url}/v1/health  -> {"ok": true, "executor": "local", "isolated": true}
    POST {url}/v1/run     {"jobs": [{"code": str, "tests": [str] | null}, ...], "limits": {Limits fields}}
                          -> {"results": [ExecutionResult.to_dict(), ...]}   (same order)

A whole GRPO group goes in one request. With a token (``token``, or the environment variable
named by ``token_env``) every request carries ``Authorization: Bearer <token>``. The service runs
the trusted test runner, so its verdicts are trusted as far as the service is.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence

from brainstacks_pl.sandbox.base import OPT_IN, ExecutionResult, Executor, Job, Limits, SandboxError, SandboxUnavailable

__all__ = ["RemoteExecutor"]


class RemoteExecutor(Executor):
    """A code-execution service reached over HTTP (see the module docstring for the protocol).

    Args:
        url: The service's base URL, e.g. ``http://sandbox-host:8977``.
        token: Bearer token; None reads the environment variable ``token_env`` (if set).
        token_env: Environment variable holding the token.
        request_timeout: Seconds to wait for one batch; None: scaled from the limits and the batch.
        batch_size: Most jobs per request.
    """

    name = "remote"
    isolated = True

    def __init__(
        self,
        url: str,
        token: str | None = None,
        token_env: str = "BRAINSTACKS_SANDBOX_TOKEN",
        request_timeout: float | None = None,
        batch_size: int = 64,
    ):
        if not str(url).startswith(("http://", "https://")):
            raise ValueError(f"a remote executor needs an http(s) URL, got {url!r}")
        self.url = str(url).rstrip("/")
        self.token = token if token is not None else os.environ.get(token_env) or None
        self.request_timeout, self.batch_size = request_timeout, max(1, int(batch_size))

    def _request(self, path: str, body: dict | None, timeout: float) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="GET" if body is None else "POST")
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            detail = err.read()[:500].decode("utf-8", "replace")
            raise SandboxError(f"remote executor {self.url}{path} answered {err.code}: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise SandboxError(f"remote executor {self.url}{path} failed: {err}") from None

    def check(self) -> None:
        try:
            health = self._request("/v1/health", None, 10.0)
        except SandboxError as err:
            raise SandboxUnavailable(f"{err}. {OPT_IN}") from None
        if not health.get("ok"):
            raise SandboxUnavailable(f"remote executor {self.url} is not healthy: {health}. {OPT_IN}")

    def run(self, job: Job, limits: Limits = Limits()) -> ExecutionResult:
        return self.run_many([job], limits)[0]

    def run_many(
        self, jobs: Sequence[Job], limits: Limits = Limits(), max_workers: int | None = None
    ) -> list[ExecutionResult]:
        jobs = list(jobs)
        results: list[ExecutionResult] = []
        for start in range(0, len(jobs), self.batch_size):
            batch = jobs[start : start + self.batch_size]
            timeout = self.request_timeout or 30.0 + (limits.timeout + 10.0) * len(batch)
            answer = self._request(
                "/v1/run", {"jobs": [j.to_dict() for j in batch], "limits": limits.to_dict()}, timeout
            )
            got = answer.get("results")
            if not isinstance(got, list) or len(got) != len(batch):
                raise SandboxError(
                    f"remote executor {self.url} returned "
                    f"{len(got) if isinstance(got, list) else got!r} results for {len(batch)} jobs"
                )
            for item in got:
                result = ExecutionResult.from_dict(item)
                result.executor = f"remote:{result.executor or '?'}"
                results.append(result)
        return results
