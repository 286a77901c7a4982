"""Starting one function process, and the private mounts of a sandboxed one. Stdlib only
(the spawner imports it)."""

from __future__ import annotations

import _posixsubprocess
import errno
import os
import stat
import sys

from hodei.agent import sandbox_linux as linux

# _posixsubprocess.fork_exec is private: its signature is known for 3.11 only.
FORK_EXEC = sys.version_info[:2] == (3, 11)


class Confinement:
    """How a sandboxed function's mounts look (fixed for the spawner's life). A plain class:
    dataclasses would import inspect and more into the spawner, and a bigger process forks
    slower."""

    __slots__ = ("covers", "exposed", "hidden_paths", "hide_processes", "private_dirs", "tmpfs_mb")

    def __init__(
        self,
        private_dirs: tuple[str, ...],  # each gets a fresh, private tmpfs
        hidden_paths: tuple[str, ...],  # masked (files by /dev/null, folders by an empty tmpfs)
        tmpfs_mb: int,
        hide_processes: bool,  # a /proc showing the function only its own processes
        covers: tuple[str, ...] = (),  # folders closed to the function, covered by a tmpfs
        exposed: tuple[str, ...] = (),  # folders put back, read as before, on top of those
    ) -> None:
        self.private_dirs = private_dirs
        self.hidden_paths = hidden_paths
        self.tmpfs_mb = tmpfs_mb
        self.hide_processes = hide_processes
        self.covers = covers
        self.exposed = exposed


def start_process(
    argv: list[str], env: dict[str, str], cwd: str, stdio: tuple[int, int, int]
) -> int:
    """Start ``argv`` (unsandboxed) in a new session with ``stdio`` as its fds 0-2 and
    nothing else open; its pid. Raises OSError when it cannot run (not found, not
    executable, cwd missing) like Popen does.

    CPython's _posixsubprocess with vfork: the child shares this process's memory and runs
    C code only up to the exec, so nothing is copied.
    """
    executable = os.fsencode(argv[0])
    if os.path.dirname(executable):
        candidates: tuple[bytes, ...] = (executable,)
    else:
        candidates = tuple(os.path.join(os.fsencode(d), executable) for d in os.get_exec_path(env))
    if not FORK_EXEC:  # another CPython than the one this was written against: the public way
        return _start_with_popen(argv, env, cwd, stdio)
    env_list = [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items() if "=" not in k]
    error_read, error_write = os.pipe2(os.O_CLOEXEC)
    try:
        pid: int = _posixsubprocess.fork_exec(
            [os.fsencode(a) for a in argv],
            candidates,
            True,  # close every other fd but the error pipe
            (error_write,),
            cwd,
            env_list,
            stdio[0],
            -1,
            -1,
            stdio[1],
            -1,
            stdio[2],
            error_read,
            error_write,
            True,  # default SIGPIPE, SIGXFSZ
            True,  # setsid
            -1,
            None,  # gid, groups, uid: unchanged (any of them set would forbid vfork)
            None,
            None,
            -1,
            None,  # type: ignore[arg-type]  # no preexec_fn: no Python in the child
            True,
        )
    finally:
        os.close(error_write)
    try:
        failure = b""
        while chunk := os.read(error_read, 4096):  # EOF: the exec succeeded
            failure += chunk
    finally:
        os.close(error_read)
    if failure:
        os.waitpid(pid, 0)
        raise _exec_error(failure, argv[0], cwd)
    return pid


def executables(name: str, env: dict[str, str], cwd: str, uid: int) -> list[str]:
    """Where ``name`` may be, in the order execvpe would try for ``uid`` started in ``cwd``:
    on ``env``'s PATH, each file of that name, and each place the uid may not look into
    (its exec then fails as it would have); ``name`` itself when it has a folder. Raises
    FileNotFoundError when there is none.

    Looked up by the parent of a forked child, whose every Python step costs it copied
    pages (execvpe in the child, with an exception per folder missed, cost a third of its
    CPU), with the uid's file-system ids for the lookup only: what the uid cannot reach
    must look to it as it would from the child, never as it does to root."""
    if os.path.dirname(name):
        return [name]
    folders = [os.path.join(cwd, folder) for folder in os.get_exec_path(env)]
    with linux.file_system_ids(uid):
        found = [path for path in (os.path.join(d, name) for d in folders) if _may_run(path)]
    if not found:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
    return found


def exec_first(paths: list[str], argv: list[str], env: dict[str, str]) -> None:
    """In a forked child: exec the first of ``paths`` that runs (one the child may not
    run is passed over, as execvpe does). Raises the first failure when none does."""
    failure: OSError | None = None
    for path in paths:
        try:
            os.execve(path, argv, env)
        except OSError as exc:
            failure = failure or exc
    assert failure is not None
    raise failure


def _may_run(path: str) -> bool:
    """A file there, or no telling (execve will say why not); not a folder, nor nothing."""
    try:
        return not stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return False
    except OSError:
        return True


def _exec_error(failure: bytes, executable: str, cwd: str) -> OSError:
    """The OSError the child reported (``OSError:<hex errno>:<where>``, as Popen reads it)."""
    _, hex_errno, where = failure.split(b":", 2)
    number = int(hex_errno, 16)
    if where == b"noexec:chdir":
        return OSError(number, os.strerror(number), cwd)
    if where == b"noexec":
        return OSError(number, os.strerror(number))
    return OSError(number, os.strerror(number), executable)


def _start_with_popen(
    argv: list[str], env: dict[str, str], cwd: str, stdio: tuple[int, int, int]
) -> int:
    import subprocess

    process = subprocess.Popen(
        argv,
        stdin=stdio[0],
        stdout=stdio[1],
        stderr=stdio[2],
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    process.returncode = 0  # reaped by the spawner's waitpid(-1), never by Popen
    return process.pid


def inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def plan_exposure(
    paths: tuple[str, ...], private_dirs: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(covers, exposed) for folders a function must read although an ancestor is closed to
    its uid (the agent's Python under /root, say) or a private folder covers them: each
    closed ancestor is covered by an empty tmpfs its uid may cross, and the folders are
    mounted back on top of it. The rest of the closed folder stays out of sight."""

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


def private_tmpfs(folder: str, tmpfs_mb: int) -> None:
    """An empty tmpfs over ``folder`` that every uid may write in (sticky, as /tmp)."""
    options = f"size={tmpfs_mb}m,mode=1777"
    linux.mount("tmpfs", folder, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, options)


def attach_trees(trees: list[tuple[str, int]]) -> None:
    """Mount each cloned tree (``linux.clone_tree``) at its path, made when missing."""
    for path, tree in trees:
        os.makedirs(path, exist_ok=True)
        linux.attach_tree(tree, path)


def private_mounts(confinement: Confinement) -> None:
    linux.unshare(linux.CLONE_NEWNS)
    # Nothing mounted from here on may reach the host's namespace.
    linux.mount("none", "/", None, linux.MS_REC | linux.MS_PRIVATE)
    trees = [(path, linux.clone_tree(path)) for path in confinement.exposed]
    flags = linux.MS_NOSUID | linux.MS_NODEV
    for folder in confinement.private_dirs:
        if os.path.isdir(folder):
            private_tmpfs(folder, confinement.tmpfs_mb)
    for path in confinement.hidden_paths:
        if os.path.isdir(path):
            linux.mount("tmpfs", path, "tmpfs", flags | linux.MS_RDONLY, "size=4k,mode=555")
        elif os.path.lexists(path):
            linux.mount("/dev/null", path, None, linux.MS_BIND)
    for folder in confinement.covers:
        linux.mount("tmpfs", folder, "tmpfs", flags | linux.MS_NOEXEC, "size=1m,mode=755")
    attach_trees(trees)
    for _, tree in trees:
        os.close(tree)
    if confinement.hide_processes:
        # hidepid=2: only the processes of one's own uid are visible, the agent's and other
        # functions' command lines included.
        linux.mount("proc", "/proc", "proc", flags | linux.MS_NOEXEC, "hidepid=2")
