"""Step 2 of the sandbox's init: start the solution (see ``_init.py``).

Fork, rlimits, dropping privileges (an unprivileged uid of its own as root; ``unshare`` and
``setpriv`` in a user namespace) and running the harness (``_child.py``); and waiting for a
program's exit in script mode. Kept apart from the test runner because this is what limits the
untrusted process. Imports only builtin modules.
"""

import _signal
import fcntl
import os
import resource
import select
import sys
import time

try:  # imported by the trainer as part of brainstacks_pl.sandbox ...
    from . import _child
except ImportError:  # ... and by the sandbox's init as a top-level module next to them
    import _child


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
