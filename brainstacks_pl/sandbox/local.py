"""Executors on this machine: ``LocalIsolatedExecutor`` (namespaces, the default) and
``UnisolatedExecutor`` (plain processes, an explicit opt-in that warns on every run).

Both start ``_init.py`` (the trusted init and test runner) with the job on its stdin and read
three capped streams back: the program's stdout and stderr and the init's report pipe, which
only the init holds. See ``docs/sandbox.md`` for the threat model and what each layer stops.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Sequence

from brainstacks_pl.sandbox import _wire
from brainstacks_pl.sandbox.base import OPT_IN, ExecutionResult, Executor, Job, Limits, SandboxUnavailable
from brainstacks_pl.sandbox.harness import init_command
from brainstacks_pl.sandbox.layout import device_numbers, find_tools, host_layout
from brainstacks_pl.sandbox.report import parse_report
from brainstacks_pl.sandbox.streams import read_streams

log = logging.getLogger(__name__)

__all__ = ["LocalIsolatedExecutor", "UnisolatedExecutor"]

SETUP_SECONDS = 10.0
"""Allowance on top of ``Limits.timeout`` for the sandbox to start, before the trainer kills it."""
UID_SPAN = 1 << 24
_uids = itertools.count(secrets.randbelow(UID_SPAN))  # random start: trainer processes (DDP ranks) rarely share a uid
_uid_lock = threading.Lock()


class _LocalExecutor(Executor):
    """Shared by both local executors: start the init, feed the job, read the streams."""

    def __init__(self, python: str | None = None, site_packages: bool = False, readonly_paths: Sequence[str] = ()):
        self.python = os.path.realpath(python or sys.executable)
        self.site_packages = site_packages
        paths = sysconfig.get_paths()
        self.python_path = list(dict.fromkeys([paths["purelib"], paths["platlib"]])) if site_packages else []
        self.readonly_paths = [os.path.realpath(p) for p in readonly_paths]

    # --------------------------------------------------------------- what subclasses decide
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _job_fields(self, scratch: str | None) -> dict:
        raise NotImplementedError

    # --------------------------------------------------------------- one run
    def run(self, job: Job, limits: Limits = Limits()) -> ExecutionResult:
        started = time.monotonic()
        scratch_dir = None if self.isolated else tempfile.mkdtemp(prefix="brainstacks-unisolated-")
        report_r, report_w = os.pipe()
        try:
            payload = {
                "code": job.code,
                "mode": "script" if job.tests is None else "serve",
                "report_fd": report_w,
                "limits": {
                    "timeout": float(limits.timeout),
                    "cpu_seconds": limits.cpu,
                    "memory_mb": int(limits.memory_mb),
                    "file_mb": int(limits.file_mb),
                    "max_open_files": int(limits.max_open_files),
                    "max_processes": int(limits.max_processes),
                    "max_value_bytes": int(limits.max_value_bytes),
                },
                "scratch_mb": int(limits.scratch_mb),
                "scratch_inodes": int(limits.scratch_inodes),
                "python": self.python,
                "python_path": self.python_path,
                **self._job_fields(scratch_dir),
            }
            try:
                proc = subprocess.Popen(
                    self._command() + [self.python, *init_command()],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    pass_fds=(report_w,),
                    env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                    start_new_session=True,
                    close_fds=True,
                )
            finally:
                os.close(report_w)
            tests = None if job.tests is None else list(job.tests)
            frames = _wire.frame(_wire.dumps(payload)) + _wire.frame(_wire.dumps(tests))
            return self._collect(proc, report_r, frames, limits, started)
        finally:
            os.close(report_r)
            if scratch_dir is not None:
                shutil.rmtree(scratch_dir, ignore_errors=True)  # fd-based: never follows the program's symlinks

    def _collect(
        self, proc: subprocess.Popen, report_r: int, payload: bytes, limits: Limits, started: float
    ) -> ExecutionResult:
        """Feed the job and read the three streams, each capped, until they close or the
        trainer's own deadline (the init's plus ``SETUP_SECONDS``) passes; then kill."""
        deadline = started + limits.timeout + SETUP_SECONDS
        out, err, report, killed = read_streams(proc, report_r, payload, limits.max_output, deadline)
        result = parse_report(report)
        result.stdout, result.stderr = out.text(), err.text()
        result.output_dropped = out.dropped + err.dropped
        result.seconds = time.monotonic() - started
        result.executor = self.name
        if killed and not result.complete:
            # the program outlasted even the trainer's deadline: a timeout, not a broken sandbox
            result.timed_out, result.sandbox_failed = True, False
            result.error = f"killed by the trainer's deadline (timeout + {SETUP_SECONDS:.0f} s) without a verdict"
        return result


class LocalIsolatedExecutor(_LocalExecutor):
    """Runs each job in fresh Linux namespaces (util-linux ``unshare``): its own PID namespace
    (it cannot see or signal the trainer; everything it started dies with it), no network, a
    minimal read-only file system with a small tmpfs scratch directory as the only writable
    place (the run directory and the home directory are not there), rlimits, no capabilities and
    ``no_new_privs`` (``setpriv``); as a uid of its own when the trainer is root, else in a user
    namespace. ``check()`` runs a probe job once and raises ``SandboxUnavailable`` (naming the
    opt-in setting for a weaker executor) when any of that is not possible here.

    Args:
        python: Interpreter for the program (default: this one's real executable).
        site_packages: Let the program import this environment's installed packages (read-only).
        readonly_paths: More host paths the program may read.
        mode: ``root`` (the trainer is root: no user namespace, the program runs as an
            unprivileged uid of its own), ``user`` (the trainer is not root: an unprivileged user
            namespace) or ``auto`` (whichever applies).
        uid_base: First uid of the program in ``root`` mode; each run takes the next of
            ``UID_SPAN`` uids from there (from a random start per trainer process).
    """

    name = "local"
    isolated = True

    def __init__(
        self,
        python: str | None = None,
        site_packages: bool = False,
        readonly_paths: Sequence[str] = (),
        mode: str = "auto",
        uid_base: int = 1_900_000_000,
    ):
        super().__init__(python, site_packages, readonly_paths)
        if mode not in ("auto", "root", "user"):
            raise ValueError(f"mode must be auto, root or user, got {mode!r}")
        self.mode = ("root" if os.geteuid() == 0 else "user") if mode == "auto" else mode
        if self.mode == "user" and os.geteuid() == 0:
            raise ValueError(
                "mode 'user' as root would run the program as host uid 0 (owner "
                "of root's files, exempt from RLIMIT_NPROC); root uses mode 'root'"
            )
        if self.mode == "root" and os.geteuid() != 0:
            raise ValueError("mode 'root' needs the trainer to run as root; use 'user' (or 'auto')")
        self.uid_base = int(uid_base)
        self._checked: str | None = None  # None: not yet; "": fine; else why not
        self._check_lock = threading.Lock()
        self._tools: dict[str, str] = {}
        self._layout_cache: tuple[list[str], str] | None = None

    def _layout(self) -> tuple[list[str], str]:
        """The host paths the program may read (bound read-only at the same path) and where the
        sandbox's root is mounted in its own mount namespace."""
        if self._layout_cache is None:
            self._layout_cache = host_layout(self.python, self.python_path, self.readonly_paths)
        return self._layout_cache

    def _find_tools(self) -> dict[str, str]:
        if not self._tools:
            self._tools = find_tools()
        return self._tools

    def _command(self) -> list[str]:
        tools = self._find_tools()
        command = [
            tools["unshare"],
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--propagation",
            "private",
            "--net",
            "--ipc",
            "--uts",
            "--cgroup",
        ]
        if self.mode == "user":
            command += ["--user", "--map-root-user"]
        return command + ["--"]

    def _job_fields(self, scratch: str | None) -> dict:
        tools = self._find_tools()
        readonly, root = self._layout()
        if self.mode == "root":  # the solution forks from the init and switches to this uid
            with _uid_lock:
                uid = self.uid_base + next(_uids) % UID_SPAN
            wrapper = []
        else:  # a user namespace maps one uid: hide the init behind a nested PID namespace instead
            uid = None
            wrapper = [
                tools["unshare"],
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--",
                tools["setpriv"],
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
            ]
        return {
            "isolated": True,
            "root": root,
            "mount": tools["mount"],
            "readonly": readonly,
            "devices": device_numbers(),
            "uid": uid,
            "scratch": "/tmp",
            "wrapper": wrapper,
        }

    def check(self) -> None:
        with self._check_lock:
            if self._checked is None:
                self._checked = self._probe()
        if self._checked:
            raise SandboxUnavailable(self._checked)

    def _probe(self) -> str:
        try:
            self._find_tools()
            self._layout()
        except SandboxUnavailable as err:
            return str(err)
        result = self.run(Job("def probe():\n    return 41 + 1\n", ("assert probe() == 42",)), Limits(timeout=10.0))
        if result.all_passed:
            return ""
        why = (result.error or "") + (f"; stderr: {result.stderr.strip()[-600:]}" if result.stderr.strip() else "")
        return f"the isolated executor does not work on this machine ({self.mode} mode): {why}. {OPT_IN}"


class UnisolatedExecutor(_LocalExecutor):
    """Plain child processes with rlimits in a temporary directory, in a session of their own
    that is killed at the end. The verdict still comes from the separate test runner, so exit
    tricks score nothing, but the program runs as the trainer's user on the trainer's machine:
    it can read what the trainer can, use the network, signal the trainer, and leave processes
    behind by starting a new session. Only for code you trust; warns on every run."""

    name = "unisolated"
    isolated = False

    def _command(self) -> list[str]:
        return []

    def _job_fields(self, scratch: str | None) -> dict:
        return {"isolated": False, "scratch": scratch, "wrapper": [], "uid": None}

    def run(self, job: Job, limits: Limits = Limits()) -> ExecutionResult:
        log.warning(
            "running model-written code WITHOUT isolation (executor: "
            "unisolated): it can read, write and reach what this process can"
        )
        return super().run(job, limits)
