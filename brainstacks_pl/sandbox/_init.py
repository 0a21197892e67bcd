"""The sandbox's trusted init and test runner (``python -I -S -B -c "...; import _init; _init.main()"``).

The local executors start it with the job on stdin (two frames: the program, then the tests)
and a report pipe the trainer reads. With isolation (``LocalIsolatedExecutor``) it runs as PID 1
of fresh PID, mount, network, IPC, UTS and cgroup namespaces (``unshare``), where it

1. builds a minimal root on a tmpfs with one ``mount -a`` of a generated fstab: read-only,
   nosuid binds of ``/usr``, the Python installation and nothing else of the host, a
   size-limited scratch tmpfs at ``/tmp`` (the only writable place), ``/proc`` of the new PID
   namespace showing a process only to its own uid, and a few ``/dev`` nodes; then ``chroot``s;
2. starts the solution with rlimits and without any capability: when the trainer is root, a
   fork of this process that switches to an unprivileged uid of its own (no exec, so no second
   interpreter start-up); in a user namespace (trainer not root), through ``unshare`` (a nested
   PID namespace with its own ``/proc``: the init is out of its sight) and ``setpriv``
   (capabilities dropped, ``no_new_privs``);
3. only then reads the tests, so the solution never had them in its memory, runs them itself,
   one by one, calling into the solution over two pipes that carry only plain values
   (``_wire``), and writes one record per test to the report pipe, which the solution never
   holds; and
4. exits, at the end or at the deadline: the kernel then kills every process left in its PID
   namespace, the solution's included.

Without isolation (``UnisolatedExecutor``) it skips 1, forks the solution as a plain child in
a new session and kills that session at the end; the verdict still comes from here.

It imports only builtin modules: it is on the critical path of every completion.
"""

import _signal
import fcntl
import os
import resource
import select
import sys
import time

try:  # imported by the trainer as brainstacks_pl.sandbox._init (which caches its bytecode) ...
    from . import _child, _wire
except ImportError:  # ... and run by the sandbox as a top-level module next to them
    import _child
    import _wire

HERE = os.path.dirname(os.path.abspath(__file__))
REPORT_FD = -1


def child_source():
    """The harness as one script for a fresh interpreter (user mode), which cannot import it."""
    with (
        open(os.path.join(HERE, "_wire.py"), encoding="utf-8") as f,
        open(os.path.join(HERE, "_child.py"), encoding="utf-8") as g,
    ):
        return f.read() + "\n" + g.read()


class Deadline(BaseException):
    """The job's time is up (raised by SIGALRM; a BaseException so tests cannot swallow it)."""


class SolutionGone(BaseException):
    """The solution process exited or broke the protocol: nothing after this can pass."""


class SolutionError(Exception):
    """An exception raised inside the solution whose type is not a builtin exception."""


def report(record, then=None):
    """One frame on the report pipe, then ``then()``; the alarm is held off meanwhile, so that it
    never cuts a frame or comes between a record and the bookkeeping that goes with it."""
    data = memoryview(_wire.frame(_wire.dumps(record)))
    _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGALRM})
    try:
        while data:
            data = data[os.write(REPORT_FD, data) :]
        if then is not None:
            then()
    finally:
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {_signal.SIGALRM})


def read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def run_command(argv):
    """Run a host tool (``mount``) to completion; its output is kept only to name a failure."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(w, 1)
            os.dup2(w, 2)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    os.close(w)
    output = read_all(r)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError(f"{' '.join(argv)} failed: {output.decode('utf-8', 'replace').strip()}")


def fstab_path(path):
    if any(c in path for c in "\n\t\\"):
        raise ValueError(f"cannot mount a path with a tab, newline or backslash: {path!r}")
    return path.replace(" ", "\\040")


def mount_table(mount, lines):
    """One ``mount -a`` over an fstab held in memory (nothing is written to the host)."""
    fd = os.memfd_create("sandbox-fstab", 0)
    try:
        os.write(fd, ("\n".join(lines) + "\n").encode())
        run_command([mount, "-a", "-T", f"/proc/self/fd/{fd}"])
    finally:
        os.close(fd)


def build_root(job):
    """Step 1 (see the module docstring); leaves this process chrooted in the new root."""
    root, mount, uid = job["root"], job["mount"], job["uid"]
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    lines = [f"sandbox-root {root} tmpfs size=2m,nr_inodes=1024,mode=0755,nosuid 0 0"]
    for path in job["readonly"]:
        lines.append(f"{fstab_path(path)} {fstab_path(root + path)} none bind,ro,nosuid,nodev,X-mount.mkdir 0 0")
    lines.append(
        f"sandbox-scratch {root}/tmp tmpfs "
        f"size={job['scratch_mb']}m,nr_inodes={job['scratch_inodes']},mode=0700{owner},nosuid,nodev,X-mount.mkdir 0 0"
    )
    if uid is not None:  # root mode; in a user namespace the nested unshare mounts its own /proc
        lines.append(f"proc {root}/proc proc nosuid,nodev,noexec,hidepid=invisible,subset=pid,X-mount.mkdir 0 0")
    mount_table(mount, lines)
    os.mkdir(root + "/dev", 0o755)
    if uid is not None:
        for path, (major, minor) in job["devices"]:
            os.mknod(root + path, 0o20666, os.makedev(major, minor))
            os.chmod(root + path, 0o666)
    else:  # no mknod in a user namespace: bind the host's nodes, then make the root read-only
        os.mkdir(root + "/proc", 0o555)
        for path, _ in job["devices"]:
            open(root + path, "w").close()
        mount_table(mount, [f"{path} {root + path} none bind,nosuid,noexec 0 0" for path, _ in job["devices"]])
        run_command([mount, "-o", "remount,ro,bind", root])
    with open(root + "/tmp/solution.py", "w", encoding="utf-8") as f:
        f.write(job["code"])
    os.chmod(root + "/tmp/solution.py", 0o444)
    os.chroot(root)
    os.chdir("/")


def start_solution(job, mode, fds):
    """Step 2: fork, limit, drop privileges, run the harness (``_child.py``). ``fds`` are the
    solution's pipe ends (read, write) in ``serve`` mode. Returns the child's pid."""
    limits = job["limits"]
    rlimits = [
        (resource.RLIMIT_CPU, limits["cpu_seconds"]),
        (resource.RLIMIT_AS, limits["memory_mb"] << 20),
        (resource.RLIMIT_FSIZE, limits["file_mb"] << 20),
        (resource.RLIMIT_NOFILE, limits["max_open_files"]),
        (resource.RLIMIT_NPROC, limits["max_processes"]),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_MEMLOCK, 0),
        (resource.RLIMIT_MSGQUEUE, 0),
    ]
    scratch = job["scratch"]
    argv = [mode, scratch + "/solution.py", "3", "4", *job["python_path"]]
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": scratch,
        "TMPDIR": scratch,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    pid = os.fork()
    if pid:
        return pid
    status = 127
    try:
        devnull = os.open("/dev/null", os.O_RDWR)
        os.dup2(devnull, 0)  # first: fd 0 still holds the tests, unread
        if fds:  # to 3 and 4, through fds above both (one of them may be 3 or 4 already)
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)
        os.closerange(5 if fds else 3, 1 << 16)
        os.setsid()
        os.chdir(scratch)
        for which, value in rlimits:
            resource.setrlimit(which, (value, value))
        _signal.signal(_signal.SIGALRM, _signal.SIG_DFL)  # the init's deadline handler is not the program's
        if job["wrapper"]:  # user namespace: unshare + setpriv + a fresh interpreter
            command = job["wrapper"] + [job["python"], "-I", "-S", "-B", "-c", job["child_source"], *argv]
            os.execve(command[0], command, env)
        if job["uid"] is not None:  # root: an unprivileged uid of its own, which clears every capability
            os.setgroups([])
            os.setresgid(job["uid"], job["uid"], job["uid"])
            os.setresuid(job["uid"], job["uid"], job["uid"])
        os.environ.clear()
        os.environ.update(env)
        status = run_harness_here(argv)
    except BaseException as err:
        try:
            os.write(2, f"sandbox: cannot start the solution: {type(err).__name__}: {err}\n".encode())
        except BaseException:
            pass
    finally:
        os._exit(status)


def run_harness_here(argv):
    """The harness in this (forked) interpreter, exiting like ``python script.py`` would."""
    sys.argv = ["-c", *argv]
    try:
        _child.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:
        tb = exc.__traceback__  # from the program's own frames on, like python script.py prints it
        while tb is not None and tb.tb_frame.f_code.co_filename != argv[1]:
            tb = tb.tb_next
        exc.__traceback__ = tb  # none for a SyntaxError in the program (3.11 prints this, whatever tb is passed)
        sys.__excepthook__(type(exc), exc, exc.__traceback__)
        code = 1
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
        import atexit

        atexit._run_exitfuncs()
    except BaseException:
        pass
    if code is None:
        code = 0
    elif type(code) is not int:
        try:
            print(code, file=sys.stderr)
        except BaseException:
            pass
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    return code & 0xFF


def wait_exit(pid, deadline):
    """The exit code of ``pid`` (a negative signal number when killed), or None at the deadline."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if pidfd is not None:
            select.select([pidfd], [], [], left)
        else:
            time.sleep(min(left, 0.005))


class Connection:
    """The test runner's end of the solution's pipes: one request, one reply."""

    def __init__(self, rfd, wfd, max_bytes):
        self.rfd, self.wfd, self.max_bytes = rfd, wfd, max_bytes
        self.gone = None  # why the solution can no longer answer

    def _read(self, n):
        chunks, left = [], n
        while left:
            select.select([self.rfd], [], [])  # interruptible by the deadline's SIGALRM
            chunk = os.read(self.rfd, min(left, 1 << 20))
            if not chunk:
                raise self.lost("the solution process exited")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def lost(self, why):
        if self.gone is None:
            self.gone = why
        return SolutionGone(self.gone)

    def receive(self):
        if self.gone is not None:
            raise SolutionGone(self.gone)
        size = int.from_bytes(self._read(4), "big")
        if size > self.max_bytes:
            raise self.lost(f"the solution sent {size} bytes, more than max_value_bytes={self.max_bytes}")
        try:
            return _wire.loads(self._read(size), self.remote)
        except _wire.WireError as err:
            raise self.lost(f"the solution broke the protocol: {err}") from None

    def remote(self, ref):
        return Remote(self, ref)

    def ask(self, op, ref, *args):
        if self.gone is not None:
            raise SolutionGone(self.gone)
        try:
            payload = _wire.dumps((op, ref, *args), self._ref_of)
        except RecursionError:
            raise ValueError("value nested too deeply to send to the solution") from None
        data = memoryview(_wire.frame(payload))
        try:
            while data:
                data = data[os.write(self.wfd, data) :]
        except BrokenPipeError:
            raise self.lost("the solution process exited") from None
        reply = self.receive()
        if type(reply) is tuple and len(reply) == 2 and reply[0] == "ok":
            return reply[1]
        if (
            type(reply) is tuple
            and len(reply) == 3
            and reply[0] == "err"
            and type(reply[1]) is str
            and type(reply[2]) is str
        ):
            raise rebuild_exception(reply[1], reply[2])
        raise self.lost("the solution broke the protocol: unexpected reply")

    def _ref_of(self, obj):
        if type(obj) is Remote and object.__getattribute__(obj, "_conn") is self:
            return object.__getattribute__(obj, "_ref")
        raise TypeError(f"cannot pass a {type(obj).__name__} to the solution (only plain data and its own objects)")


def rebuild_exception(name, message):
    """The solution's exception as a fresh builtin exception of the same name, else SolutionError."""
    import builtins

    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:
            pass
    return SolutionError(f"{name}: {message}")


def _want(value, kind, what):
    if type(value) is not kind:
        raise TypeError(f"the solution's {what} returned a {type(value).__name__}, not a {kind.__name__}")
    return value


class Remote:
    """An object that lives in the solution process. Attribute access, calls, indexing,
    iteration, ``len``, ``bool``, ``str`` and arithmetic are forwarded; comparisons are forwarded
    only between two of the solution's objects: one of its objects never equals a plain value
    here (an object claiming to equal everything cannot pass an ``assert f(x) == 3``)."""

    __slots__ = ("_conn", "_ref")

    def __init__(self, conn, ref):
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_ref", ref)

    def _ask(self, op, *args):
        return object.__getattribute__(self, "_conn").ask(op, object.__getattribute__(self, "_ref"), *args)

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name)

    def __setattr__(self, name, value):
        self._ask("setattr", name, value)

    def __call__(self, *args, **kwargs):
        return self._ask("call", args, kwargs)

    def __getitem__(self, key):
        return self._ask("getitem", key)

    def __setitem__(self, key, value):
        self._ask("setitem", key, value)

    def __delitem__(self, key):
        self._ask("delitem", key)

    def __len__(self):
        return _want(self._ask("len"), int, "__len__")

    def __bool__(self):
        return _want(self._ask("bool"), bool, "__bool__")

    def __iter__(self):
        return self._ask("iter")

    def __next__(self):
        return self._ask("next")

    def __contains__(self, item):
        return _want(self._ask("contains", item), bool, "__contains__")

    def __str__(self):
        return _want(self._ask("str"), str, "__str__")

    def __repr__(self):
        return _want(self._ask("repr"), str, "__repr__")

    def __hash__(self):
        return hash((id(object.__getattribute__(self, "_conn")), object.__getattribute__(self, "_ref")))

    def __instancecheck__(self, obj):
        return _want(self._ask("isinstance", obj), bool, "isinstance")

    def _compare(self, op, other):
        if type(other) is not Remote or object.__getattribute__(other, "_conn") is not object.__getattribute__(
            self, "_conn"
        ):
            return NotImplemented
        return self._ask("compare", op, other)

    def __eq__(self, other):
        return self._compare("eq", other)

    def __ne__(self, other):
        return self._compare("ne", other)

    def __lt__(self, other):
        return self._compare("lt", other)

    def __le__(self, other):
        return self._compare("le", other)

    def __gt__(self, other):
        return self._compare("gt", other)

    def __ge__(self, other):
        return self._compare("ge", other)

    def __neg__(self):
        return self._ask("unary", "neg")

    def __pos__(self):
        return self._ask("unary", "pos")

    def __abs__(self):
        return self._ask("unary", "abs")

    def __invert__(self):
        return self._ask("unary", "invert")


def _binop(name, reflected):
    def op(self, other):
        return self._ask("binop", name, other, reflected)

    return op


for _name in (
    "add",
    "sub",
    "mul",
    "truediv",
    "floordiv",
    "mod",
    "pow",
    "and",
    "or",
    "xor",
    "lshift",
    "rshift",
    "matmul",
):
    setattr(Remote, f"__{_name}__", _binop(_name, False))
    setattr(Remote, f"__r{_name}__", _binop(_name, True))


def on_alarm(signum, frame):
    raise Deadline()


def run_tests(job, conn, deadline):
    """Step 3: one report record per test, in order. Returns (passed, timed_out, error)."""
    import builtins

    tests = job["tests"]
    state = {"next": 0, "passed": 0}

    def advance(ok):
        state["next"] += 1
        state["passed"] += ok

    def record(ok, message):
        report(("test", state["next"], ok, message), lambda: advance(ok))

    timed_out, error = False, None
    try:  # the one-shot alarm raises Deadline once, wherever it lands below
        try:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Deadline()
            _signal.setitimer(_signal.ITIMER_REAL, left)
            hello = conn.receive()
            if type(hello) is tuple and len(hello) == 3 and hello[0] == "failed":
                raise conn.lost(f"the solution raised {hello[1]} while loading: {hello[2]}")
            if not (
                type(hello) is tuple
                and len(hello) == 2
                and hello[0] == "ready"
                and type(hello[1]) is dict
                and all(type(k) is str for k in hello[1])
            ):
                raise conn.lost("the solution broke the protocol before the tests")
            namespace = dict(hello[1])
            namespace.update({"__builtins__": builtins, "__name__": "__tests__"})
            for source in tests:
                try:
                    exec(compile(source, f"<test {state['next']}>", "exec"), namespace)
                    if conn.gone is not None:  # a test that caught the failure still fails
                        raise SolutionGone(conn.gone)
                except (Deadline, SolutionGone):
                    raise
                except BaseException as err:
                    try:
                        message = f"{type(err).__name__}: {err}"[:1000]
                    except BaseException:
                        message = type(err).__name__
                    record(False, message)
                else:
                    record(True, None)
        except SolutionGone as err:
            error = str(err)
    except Deadline:
        timed_out, error = True, f"time limit reached (test {state['next']})"
    _signal.setitimer(_signal.ITIMER_REAL, 0)
    while state["next"] < len(tests):
        record(False, error)
    return state["passed"], timed_out, error


def read_frame(fd):
    size = int.from_bytes(read_exactly(fd, 4), "big")
    return _wire.loads(read_exactly(fd, size))


def read_exactly(fd, n):
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the job ended early")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def main():
    global REPORT_FD
    started = time.monotonic()
    sys.pycache_prefix = None  # it held only our own bytecode; the stdlib's is in its __pycache__
    job = read_frame(0)
    REPORT_FD = job["report_fd"]
    isolated = job["isolated"]
    mode = job["mode"]
    try:
        if job["wrapper"]:  # before the chroot hides this directory
            job["child_source"] = child_source()
        if isolated:
            build_root(job)
        else:
            with open(job["scratch"] + "/solution.py", "w", encoding="utf-8") as f:
                f.write(job["code"])
        report(("setup", time.monotonic() - started))
        fds = None
        if mode == "serve":
            to_child_r, to_child_w = os.pipe()
            from_child_r, from_child_w = os.pipe()
            fds = (to_child_r, from_child_w)
        _signal.signal(_signal.SIGALRM, on_alarm)
        _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)
        deadline = time.monotonic() + job["limits"]["timeout"]
        pid = start_solution(job, mode, fds)
        job["tests"] = read_frame(0)  # only now: the solution never held them
        if mode == "serve":
            os.close(to_child_r)
            os.close(from_child_w)
            conn = Connection(from_child_r, to_child_w, job["limits"]["max_value_bytes"])
            passed, timed_out, error = run_tests(job, conn, deadline)
            report(("done", None, timed_out, error, passed, time.monotonic() - started))
        else:
            status = wait_exit(pid, deadline)
            report(("done", status, status is None, None, 0, time.monotonic() - started))
        if not isolated:
            try:
                os.killpg(pid, 9)
            except OSError:
                pass
    except BaseException as err:
        report(("done", None, False, f"sandbox failed: {type(err).__name__}: {err}", 0, time.monotonic() - started))
        os._exit(2)
    os._exit(0)
