"""What a function's process does between the spawner's fork and the exec of its command:
network namespace, private mounts, rlimits, its own uid, no new privileges, its pipes.

Runs in the forked child of the spawner (single-threaded, root). Any failure is written to
``error_fd`` and the child exits 127 without running the command. Stdlib only.
"""

from __future__ import annotations

import os
import resource
import signal
from dataclasses import dataclass

from hodei.agent import sandbox_linux as linux

# Python ignores these; a command must start with the default dispositions.
RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


@dataclass(frozen=True, slots=True)
class Confinement:
    """How the spawner confines every sandboxed function (fixed for its life)."""

    private_dirs: tuple[str, ...]  # each gets a fresh, private tmpfs
    hidden_paths: tuple[str, ...]  # masked (files by /dev/null, folders by an empty tmpfs)
    tmpfs_mb: int
    hide_processes: bool  # a /proc showing the function only its own processes
    covers: tuple[str, ...] = ()  # folders closed to the function, covered by an empty tmpfs
    exposed: tuple[str, ...] = ()  # folders put back, read as before, on top of those covers


@dataclass(frozen=True, slots=True)
class Launch:
    """One function process to start."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    uid: int | None  # None: unsandboxed (keeps the spawner's user)
    stdio: tuple[int, int, int]
    netns_fd: int  # -1: stay in the spawner's network namespace
    cgroup_procs: str  # join this cgroup first ("" = none, or born in it already)
    nproc: int
    data_bytes: int


def run(launch: Launch, confinement: Confinement, error_fd: int) -> None:
    """Set up and exec; never returns."""
    try:
        if launch.cgroup_procs:
            with open(launch.cgroup_procs, "w") as f:
                f.write("0")
        if launch.netns_fd >= 0:
            linux.setns(launch.netns_fd, linux.CLONE_NEWNET)
        if launch.uid is not None:
            _private_mounts(confinement)
            if launch.nproc > 0:
                resource.setrlimit(resource.RLIMIT_NPROC, (launch.nproc, launch.nproc))
        if launch.data_bytes > 0:
            resource.setrlimit(resource.RLIMIT_DATA, (launch.data_bytes, launch.data_bytes))
        os.setsid()
        if launch.uid is not None:
            os.setgroups([])
            os.setresgid(launch.uid, launch.uid, launch.uid)
            os.setresuid(launch.uid, launch.uid, launch.uid)
            linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
        for target, fd in enumerate(launch.stdio):
            os.dup2(fd, target)  # dup2 clears close-on-exec on the copy
        for sig in RESET_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        os.chdir(launch.cwd)
        os.execvpe(launch.argv[0], launch.argv, launch.env)
    except BaseException as exc:
        message = str(exc) if isinstance(exc, OSError) else repr(exc)
        try:
            os.write(error_fd, message.encode(errors="replace")[:4000])
        finally:
            os._exit(127)
    os._exit(127)


def plan_exposure(
    paths: tuple[str, ...], private_dirs: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(covers, exposed) for folders a function must read although an ancestor is closed to
    its uid (the agent's Python under /root, say) or a private folder covers them: each
    closed ancestor is covered by an empty tmpfs its uid may cross, and the folders are
    mounted back on top of it. The rest of the closed folder stays out of sight."""

    def inside(path: str, folder: str) -> bool:
        return path == folder or path.startswith(folder.rstrip("/") + "/")

    covers: list[str] = []
    exposed: list[str] = []
    for path in sorted({os.path.realpath(p) for p in paths if p}, key=len):
        if not os.path.isdir(path) or any(inside(path, done) for done in exposed):
            continue
        parts = path.split("/")
        closed = ""
        for depth in range(2, len(parts)):
            ancestor = "/".join(parts[:depth])
            if not os.stat(ancestor).st_mode & 0o001:
                closed = ancestor
                break
        hidden = any(inside(path, folder) for folder in private_dirs)
        if closed and not any(inside(closed, folder) for folder in (*covers, *private_dirs)):
            covers.append(closed)
        if closed or hidden:
            exposed.append(path)
    return tuple(covers), tuple(exposed)


def _private_mounts(confinement: Confinement) -> None:
    linux.unshare(linux.CLONE_NEWNS)
    # Nothing mounted from here on may reach the host's namespace.
    linux.mount("none", "/", None, linux.MS_REC | linux.MS_PRIVATE)
    trees = [(path, linux.clone_tree(path)) for path in confinement.exposed]
    flags = linux.MS_NOSUID | linux.MS_NODEV
    size = f"size={confinement.tmpfs_mb}m,mode=1777"
    for folder in confinement.private_dirs:
        if os.path.isdir(folder):
            linux.mount("tmpfs", folder, "tmpfs", flags, size)
    for path in confinement.hidden_paths:
        if os.path.isdir(path):
            linux.mount("tmpfs", path, "tmpfs", flags | linux.MS_RDONLY, "size=4k,mode=555")
        elif os.path.lexists(path):
            linux.mount("/dev/null", path, None, linux.MS_BIND)
    for folder in confinement.covers:
        linux.mount("tmpfs", folder, "tmpfs", flags | linux.MS_NOEXEC, "size=1m,mode=755")
    for path, tree in trees:
        os.makedirs(path, exist_ok=True)
        linux.attach_tree(tree, path)
        os.close(tree)
    if confinement.hide_processes:
        # hidepid=2: only the processes of one's own uid are visible, the agent's and other
        # functions' command lines included.
        linux.mount("proc", "/proc", "proc", flags | linux.MS_NOEXEC, "hidepid=2")
