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

Step 1 lives in ``_rootfs.py``, step 2 in ``_launch.py`` and the test runner's end of the
solution's pipes in ``_remote.py``; this module runs the steps and writes the report.

It imports only builtin modules: it is on the critical path of every completion.
"""

import _signal
import os
import sys
import time

try:  # imported by the trainer as brainstacks_pl.sandbox._init (which caches its bytecode) ...
    from . import _launch, _remote, _rootfs, _wire
except ImportError:  # ... and run by the sandbox as a top-level module next to them
    import _launch
    import _remote
    import _rootfs
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
                        raise _remote.SolutionGone(conn.gone)
                except (Deadline, _remote.SolutionGone):
                    raise
                except BaseException as err:
                    try:
                        message = f"{type(err).__name__}: {err}"[:1000]
                    except BaseException:
                        message = type(err).__name__
                    record(False, message)
                else:
                    record(True, None)
        except _remote.SolutionGone as err:
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
            _rootfs.build_root(job)
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
        pid = _launch.start_solution(job, mode, fds)
        job["tests"] = read_frame(0)  # only now: the solution never held them
        if mode == "serve":
            os.close(to_child_r)
            os.close(from_child_w)
            conn = _remote.Connection(from_child_r, to_child_w, job["limits"]["max_value_bytes"])
            passed, timed_out, error = run_tests(job, conn, deadline)
            report(("done", None, timed_out, error, passed, time.monotonic() - started))
        else:
            status = _launch.wait_exit(pid, deadline)
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
