"""Where the isolated sandbox's file system and namespaces come from on this host: the paths
bound read-only, where the root tmpfs is mounted, the ``/dev`` nodes, and util-linux's tools.

Kept apart from the executor: this is the host inspection, done once per executor; the init
(``_rootfs.py``) builds the root from what is found here.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

from brainstacks_pl.sandbox.base import OPT_IN, SandboxUnavailable

__all__ = ["DEVICES", "ROOT_CANDIDATES", "device_numbers", "find_tools", "host_layout"]

DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
# Where the sandbox's root tmpfs is mounted inside its own mount namespace (the host never
# sees it): the first of these that exists and holds none of the read-only paths.
ROOT_CANDIDATES = ("/tmp", "/mnt", "/media", "/srv", "/opt", "/var/tmp", "/run", "/home")


def host_layout(python: str, python_path: Sequence[str], readonly_paths: Sequence[str]) -> tuple[list[str], str]:
    """The host paths the program may read (bound read-only at the same path) and where the
    sandbox's root is mounted in its own mount namespace."""
    paths = ["/usr"]
    links = []  # merged-/usr symlinks (/bin -> usr/bin): bound at their own path; mount follows them
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name) and os.path.isdir(name):
            links.append(name)
        elif os.path.isdir(name):
            paths.append(name)
    prefix = os.path.realpath(sys.base_prefix)
    paths += [prefix, os.path.dirname(python)]
    paths += [os.path.realpath(p) for p in python_path]
    paths += readonly_paths
    keep: list[str] = []
    for path in sorted(set(paths), key=len):
        if os.path.exists(path) and not any(path == k or path.startswith(k.rstrip("/") + "/") for k in keep):
            keep.append(path)
    for candidate in ROOT_CANDIDATES:
        if (
            os.path.isdir(candidate)
            and not os.path.islink(candidate)
            and not any(p == candidate or p.startswith(candidate + "/") or candidate.startswith(p + "/") for p in keep)
        ):
            return keep + links, candidate
    raise SandboxUnavailable(
        f"no directory to mount the sandbox root on (tried {', '.join(ROOT_CANDIDATES)}). {OPT_IN}"
    )


def find_tools() -> dict[str, str]:
    """util-linux's ``unshare``, ``setpriv`` and ``mount`` (real paths), or ``SandboxUnavailable``
    naming the opt-in where this is not Linux or one is missing."""
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(f"the isolated executor needs Linux namespaces; this is {sys.platform}. {OPT_IN}")
    tools = {}
    for tool in ("unshare", "setpriv", "mount"):
        found = shutil.which(tool, path="/usr/bin:/bin:/usr/sbin:/sbin")
        if not found:
            raise SandboxUnavailable(
                f"the isolated executor needs util-linux's `{tool}`, which is not installed. {OPT_IN}"
            )
        tools[tool] = os.path.realpath(found)
    return tools


def device_numbers() -> list[tuple[str, tuple[int, int]]]:
    """The ``DEVICES`` that exist here, with their (major, minor) numbers for ``mknod``."""
    devices = []
    for path in DEVICES:
        try:
            st = os.stat(path)
        except OSError:
            continue
        devices.append((path, (os.major(st.st_rdev), os.minor(st.st_rdev))))
    return devices
