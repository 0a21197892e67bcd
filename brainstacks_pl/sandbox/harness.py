"""Starting the sandbox's init (``_init.py``) from the trainer: the interpreter command line,
with the init's bytecode compiled once per trainer process.

Kept apart from the executors: this is the one place that knows how the trusted harness is
loaded into a fresh, isolated interpreter.
"""

from __future__ import annotations

import atexit
import logging
import os
import py_compile
import shutil
import sys
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["HARNESS_MODULES", "init_command"]

HARNESS_MODULES = ("_init", "_child", "_launch", "_remote", "_rootfs", "_wire")
"""The sandbox-side modules: the init imports them before it chroots, from ``HERE``."""
HERE = str(Path(__file__).parent)
_bytecode: dict[str, str | None] = {}
_bytecode_lock = threading.Lock()


def init_command() -> list[str]:
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
        for name in HARNESS_MODULES:
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
