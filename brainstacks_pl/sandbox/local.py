"""Executors on this machine: ``LocalIsolatedExecutor`` (namespaces, the default) and
``UnisolatedExecutor`` (plain processes, an explicit opt-in that warns on every run).

Both start ``_init.py`` (the trusted init and test runner) with the job on its stdin and read
three capped streams back: the program's stdout and stderr and the init's report pipe, which
only the init holds. See ``docs/sandbox.md`` for the threat model and what each layer stops.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import py_compile
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from brainstacks_pl.sandbox import _wire
from brainstacks_pl.sandbox.base import OPT_IN, ExecutionResult, Executor, Job, Limits, SandboxUnavailable, TestOutcome

log = logging.getLogger(__name__)

__all__ = ["LocalIsolatedExecutor", "UnisolatedExecutor"]

DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
# Where the sandbox's root tmpfs is mounted inside its own mount namespace (the host never
# sees it): the first of these that exists and holds none of the read-only paths.
ROOT_CANDIDATES = ("/tmp", "/mnt", "/media", "/srv", "/opt", "/var/tmp", "/run", "/home")
SETUP_SECONDS = 10.0
"""Allowance on top of ``Limits.timeout`` for the sandbox to start, before the trainer kills it."""
GRACE_SECONDS = 2.0
"""After a kill, how long the trainer waits for the streams to close before it gives up on them."""

HERE = str(Path(__file__).parent)
_bytecode: dict[str, str | None] = {}
_bytecode_lock = threading.Lock()


def _init_command() -> list[str]:
    """Interpreter flags and code that start the init: as a module whose bytecode (and that of
    the modules it imports) was compiled once per trainer process into a private directory
    (``sys.pycache_prefix``), so no run compiles 800 lines of source first."""
    with _bytecode_lock:
        if "prefix" not in _bytecode:
            _bytecode["prefix"] = _compile_harness()
    prefix = _bytecode["prefix"]
    setup = f"sys.pycache_prefix = {prefix!r}; " if prefix else ""
    return ["-I", "-S", "-B", "-c", f"import sys; {setup}sys.path[:0] = [{HERE!r}]; import _init; _init.main()"]


def _compile_harness() -> str | None:
    prefix = None
    try:
        prefix = tempfile.mkdtemp(prefix="brainstacks-sandbox-pyc-")  # 0700, fresh: nobody else can plant bytecode
        for name in ("_init", "_child", "_launch", "_remote", "_rootfs", "_wire"):
            source = os.path.join(HERE, name + ".py")
            target = os.path.join(prefix, HERE.lstrip(os.sep), f"{name}.{sys.implementation.cache_tag}.pyc")
            py_compile.compile(source, cfile=target, doraise=True)
    except (OSError, py_compile.PyCompileError) as err:
        log.debug("sandbox bytecode not cached (%s); the init compiles its source", err)
        if prefix:
            shutil.rmtree(prefix, ignore_errors=True)
        return None
    owner = os.getpid()
    atexit.register(
        lambda: os.getpid() == owner and shutil.rmtree(prefix, ignore_errors=True)
    )  # not from forked children
    return prefix


UID_SPAN = 1 << 24
_uids = itertools.count(secrets.randbelow(UID_SPAN))  # random start: trainer processes (DDP ranks) rarely share a uid
_uid_lock = threading.Lock()


class _Tail:
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


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


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
                    self._command() + [self.python, *_init_command()],
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
        out, err, report = _Tail(limits.max_output), _Tail(limits.max_output), bytearray()
        report_cap = (1 << 20) + 4096 * (1 + len(payload) // 64)  # the trusted init never writes this much
        sel = selectors.DefaultSelector()
        sinks = {proc.stdout.fileno(): out.add, proc.stderr.fileno(): err.add, report_r: report.extend}
        for fd in sinks:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        stdin, pending = proc.stdin.fileno(), memoryview(payload)
        os.set_blocking(stdin, False)
        sel.register(stdin, selectors.EVENT_WRITE)
        deadline = started + limits.timeout + SETUP_SECONDS
        killed = False
        try:
            while sel.get_map():
                left = deadline - time.monotonic()
                if left <= 0 or (len(report) > report_cap and not killed):
                    if killed:
                        log.warning("sandbox streams still open %.1f s after the kill; leaving them", GRACE_SECONDS)
                        break
                    self._kill(proc)
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
                    self._kill(proc)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        result = self._parse(bytes(report), limits)
        result.stdout, result.stderr = out.text(), err.text()
        result.output_dropped = out.dropped + err.dropped
        result.seconds = time.monotonic() - started
        result.executor = self.name
        if killed and not result.complete:
            # the program outlasted even the trainer's deadline: a timeout, not a broken sandbox
            result.timed_out, result.sandbox_failed = True, False
            result.error = f"killed by the trainer's deadline (timeout + {SETUP_SECONDS:.0f} s) without a verdict"
        return result

    def _kill(self, proc: subprocess.Popen) -> None:
        """Kill the init (everything in its PID namespace dies with it), then the ``unshare``
        process waiting for it; unisolated, the init's session."""
        for pid in _children(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass

    def _parse(self, data: bytes, limits: Limits) -> ExecutionResult:
        result = ExecutionResult()
        view, pos = memoryview(data), 0
        tests: dict[int, TestOutcome] = {}
        try:
            while pos + 4 <= len(view):
                size = int.from_bytes(view[pos : pos + 4], "big")
                record = _wire.loads(view[pos + 4 : pos + 4 + size])
                pos += 4 + size
                if record[0] == "test":
                    _, index, passed, error = record
                    tests[index] = TestOutcome(index, bool(passed), error)
                elif record[0] == "done":
                    _, status, timed_out, error, _passed, _seconds = record
                    result.returncode, result.timed_out, result.error = status, bool(timed_out), error
                    result.complete = True
                    if error and error.startswith("sandbox failed"):
                        result.sandbox_failed, result.complete = True, False
        except (_wire.WireError, ValueError, TypeError) as err:
            result.sandbox_failed, result.complete = True, False
            result.error = f"unreadable sandbox report: {err}"
        result.tests = [tests[i] for i in sorted(tests)]
        if result.complete and sorted(tests) != list(range(len(tests))):
            result.sandbox_failed, result.complete = True, False
            result.error = "the sandbox report has gaps"
        if not result.complete and result.error is None:
            result.sandbox_failed = True
            result.error = "the sandbox ended without a verdict"
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
            self._layout_cache = self._compute_layout()
        return self._layout_cache

    def _compute_layout(self) -> tuple[list[str], str]:
        paths = ["/usr"]
        links = []  # merged-/usr symlinks (/bin -> usr/bin): bound at their own path; mount follows them
        for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(name) and os.path.isdir(name):
                links.append(name)
            elif os.path.isdir(name):
                paths.append(name)
        prefix = os.path.realpath(sys.base_prefix)
        paths += [prefix, os.path.dirname(self.python)]
        paths += [os.path.realpath(p) for p in self.python_path]
        paths += self.readonly_paths
        keep: list[str] = []
        for path in sorted(set(paths), key=len):
            if os.path.exists(path) and not any(path == k or path.startswith(k.rstrip("/") + "/") for k in keep):
                keep.append(path)
        for candidate in ROOT_CANDIDATES:
            if (
                os.path.isdir(candidate)
                and not os.path.islink(candidate)
                and not any(
                    p == candidate or p.startswith(candidate + "/") or candidate.startswith(p + "/") for p in keep
                )
            ):
                return keep + links, candidate
        raise SandboxUnavailable(
            f"no directory to mount the sandbox root on (tried {', '.join(ROOT_CANDIDATES)}). {OPT_IN}"
        )

    def _find_tools(self) -> dict[str, str]:
        if not self._tools:
            if not sys.platform.startswith("linux"):
                raise SandboxUnavailable(
                    f"the isolated executor needs Linux namespaces; this is {sys.platform}. {OPT_IN}"
                )
            tools = {}
            for tool in ("unshare", "setpriv", "mount"):
                found = shutil.which(tool, path="/usr/bin:/bin:/usr/sbin:/sbin")
                if not found:
                    raise SandboxUnavailable(
                        f"the isolated executor needs util-linux's `{tool}`, which is not installed. {OPT_IN}"
                    )
                tools[tool] = os.path.realpath(found)
            self._tools = tools
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
        devices = []
        for path in DEVICES:
            try:
                st = os.stat(path)
            except OSError:
                continue
            devices.append((path, (os.major(st.st_rdev), os.minor(st.st_rdev))))
        return {
            "isolated": True,
            "root": root,
            "mount": tools["mount"],
            "readonly": readonly,
            "devices": devices,
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
