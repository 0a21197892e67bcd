"""The trainer's side of a running sandbox: feeding the job to the init's stdin and reading its
three streams (the program's stdout and stderr, the init's report pipe), each capped, until they
close or a deadline passes; then the kill.

Kept apart from the executors: this is the one loop that must never block on, or be flooded by,
what the untrusted program writes.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["GRACE_SECONDS", "Tail", "kill", "read_streams"]

GRACE_SECONDS = 2.0
"""After a kill, how long the trainer waits for the streams to close before it gives up on them."""


class Tail:
    """The last ``cap`` bytes of a stream; everything before is counted and dropped."""

    def __init__(self, cap: int):
        self.cap, self.buf, self.dropped = cap, bytearray(), 0

    def add(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > 2 * self.cap:
            cut = len(self.buf) - self.cap
            self.dropped += cut
            del self.buf[:cut]

    def text(self) -> str:
        if len(self.buf) > self.cap:
            self.dropped += len(self.buf) - self.cap
            del self.buf[: len(self.buf) - self.cap]
        return self.buf.decode("utf-8", "replace")


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def kill(proc: subprocess.Popen) -> None:
    """Kill the init (everything in its PID namespace dies with it), then the ``unshare``
    process waiting for it; unisolated, the init's session."""
    for pid in children(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


def read_streams(
    proc: subprocess.Popen,
    report_r: int,
    payload: bytes,
    max_output: int,
    deadline: float,
) -> tuple[Tail, Tail, bytes, bool]:
    """Write ``payload`` to the init's stdin and read stdout, stderr and the report pipe until
    they close or ``deadline`` passes (or the report outgrows what the trusted init ever writes);
    then ``kill(proc)`` and wait ``GRACE_SECONDS`` more. Returns (stdout, stderr, report, killed)."""
    out, err, report = Tail(max_output), Tail(max_output), bytearray()
    report_cap = (1 << 20) + 4096 * (1 + len(payload) // 64)  # the trusted init never writes this much
    sel = selectors.DefaultSelector()
    sinks = {proc.stdout.fileno(): out.add, proc.stderr.fileno(): err.add, report_r: report.extend}
    for fd in sinks:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    stdin, pending = proc.stdin.fileno(), memoryview(payload)
    os.set_blocking(stdin, False)
    sel.register(stdin, selectors.EVENT_WRITE)
    killed = False
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0 or (len(report) > report_cap and not killed):
                if killed:
                    log.warning("sandbox streams still open %.1f s after the kill; leaving them", GRACE_SECONDS)
                    break
                kill(proc)
                killed, deadline = True, time.monotonic() + GRACE_SECONDS
                continue
            for key, _ in sel.select(left):
                if key.fd == stdin:
                    try:
                        pending = pending[os.write(stdin, pending[: 1 << 16]) :]
                    except BlockingIOError:
                        continue
                    except OSError:  # the init is gone; what it reported says why
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(stdin)
                        proc.stdin.close()
                    continue
                try:
                    data = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(key.fd)
                    continue
                sinks[key.fd](data)
    finally:
        sel.close()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
        if not killed and proc.poll() is None:
            try:
                proc.wait(timeout=GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                kill(proc)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out, err, bytes(report), killed
