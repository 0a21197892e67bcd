"""Step 1 of the sandbox's init: the minimal root file system (see ``_init.py``).

A tmpfs root with read-only binds of the host paths the program may read, a size-limited
scratch tmpfs, ``/proc`` and a few ``/dev`` nodes, all from one ``mount -a`` of an fstab held in
memory; then ``chroot``. Kept apart from the test runner: this is the only part that touches
mounts. Imports only builtin modules (it is loaded before the chroot, on every completion).
"""

import os


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
