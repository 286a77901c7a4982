"""One slot of a sandboxed spawner: a long-lived root process that starts the function
processes of one uid, one at a time, and answers the agent directly on a socket of its own.

It is forked once from the spawner and set up once: its own mount namespace (private tmpfs
folders, masked paths, a /proc of the uid's processes, the agent's Python exposed), the
empty network namespace, its own IPC namespace, RLIMIT_NPROC, no new privileges, its slot
cgroup. Every function it forks inherits all of that for free, so a spawn costs one fork of
this small process and the exec, with no Python in the child. It is a child subreaper:
every process a function starts stays its descendant, so "nothing left" is "no child
left", and the function's end is reported only then. Leftovers are killed by a helper that
becomes the uid and kills everything of it at once (a root process must never
``kill(-1)``).

IPC objects outlive processes, and a uid serves one function after another: when a
function leaves System V objects or POSIX message queues behind (told by counts, and by
listing the namespace's mqueue filesystem, which the slot holds open), the slot enters a
new IPC namespace before the next one starts. That filesystem is mounted over /dev/mqueue
where the host has one (which would show the host's queues), and nowhere otherwise.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import socket

from hodei.agent import sandbox_cgroup as cgroup
from hodei.agent import sandbox_child as child
from hodei.agent import sandbox_linux as linux
from hodei.agent import sandbox_wire as wire

# typing stays unimported at run time: the spawner imports as little as it can, since a
# smaller process forks faster (mypy takes any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MEMORY_SLACK_MB = 32  # this process shares its slot's cgroup
MQUEUE = "/dev/mqueue"


class Slot:
    def __init__(
        self,
        sock: socket.socket,
        index: int,
        uid: int,
        netns: dict[str, int],
        cgroups: cgroup.SlotCgroups | None,
        pids_max: int,
        confinement: child.Confinement,
    ) -> None:
        self.sock = sock
        self.index = index
        self.uid = uid
        self.netns = netns  # "host", "empty" -> namespace fd
        self.current_netns = -1
        self.cgroups = cgroups
        self.pids_max = pids_max
        self.private_dirs = tuple(d for d in confinement.private_dirs if os.path.isdir(d))
        self.exposed = confinement.exposed
        self.tmpfs_mb = confinement.tmpfs_mb
        self.job_id: int | None = None
        self.pid = 0
        self.last_pid = 0
        self.status: int | None = None
        self.killer = 0
        self.fresh_inodes: dict[str, int] = {}
        self.mqueue = -1  # the root of this IPC namespace's POSIX message queues
        self.cover_mqueue = os.path.isdir(MQUEUE)  # the host's would show its queues
        self.mqueue_covered = False

    def serve(self) -> None:
        # What an untouched private folder holds: its root, and the way to what is exposed
        # in it (the agent's Python in a checkout under /tmp).
        for folder in self.private_dirs:
            with contextlib.suppress(OSError):
                self.fresh_inodes[folder] = _inodes_used(folder)
        wakeup_read, wakeup_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.set_wakeup_fd(wakeup_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(wakeup_read, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == wakeup_read:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wakeup_read, 4096)
            self._reap()
            try:
                while (received := wire.receive(self.sock)) is not None:
                    self._handle(*received)
            except EOFError:
                self._kill()  # the agent is gone: so is everything of this slot
                return

    def _handle(self, message: dict[str, Any], fds: list[int]) -> None:
        try:
            if message["op"] == "spawn":
                self._spawn(message, fds)
            elif message["op"] == "kill" and message["id"] == self.job_id:
                self._kill()
        finally:
            for fd in fds:
                os.close(fd)

    def _spawn(self, message: dict[str, Any], fds: list[int]) -> None:
        job_id = message["id"]
        if self.job_id is not None:
            self._report(job_id, 127, f"slot {self.index} is busy")
            return
        self.last_pid = 0
        if message.get("netns") and len(fds) > 3:
            netns = fds[3]
        else:
            netns = self.netns["host" if message.get("network") else "empty"]
        memory_mb = int(message.get("memory_mb", 0))
        pids = int(message.get("pids") or self.pids_max)
        try:
            if netns != self.current_netns:
                linux.setns(netns, linux.CLONE_NEWNET)
                self.current_netns = netns if netns in self.netns.values() else -1
            if self.cgroups is not None:
                cgroup_memory = memory_mb + MEMORY_SLACK_MB if memory_mb else 0
                cpu = int(message.get("cpu_millicores", 0))
                self.cgroups.limit(self.index, pids + 2, cgroup_memory, cpu)
            pid = self._launch(message, (fds[0], fds[1], fds[2]), memory_mb, pids)
        except OSError as exc:
            self._report(job_id, 127, str(exc))
            return
        self.job_id, self.pid, self.last_pid, self.status = job_id, pid, pid, None

    def _launch(
        self, message: dict[str, Any], stdio: tuple[int, int, int], memory_mb: int, pids: int
    ) -> int:
        """Fork and exec the function as this slot's uid; its pid, once it runs the
        command. Raises OSError when the command cannot run."""
        argv: list[str] = message["argv"]
        env: dict[str, str] = message["env"]
        cwd = message.get("cwd") or "/tmp"
        uid = self.uid
        executables = child.executables(argv[0], env, cwd, uid)
        error_read, error_write = os.pipe2(os.O_CLOEXEC)
        try:
            pid = _fork()
            if pid == 0:
                try:
                    # Hard limits, which the function cannot raise again.
                    if memory_mb > 0:
                        data = memory_mb * 1024 * 1024
                        resource.setrlimit(resource.RLIMIT_DATA, (data, data))
                    if pids < self.pids_max:
                        resource.setrlimit(resource.RLIMIT_NPROC, (pids, pids))
                    os.setsid()
                    os.setgroups([])
                    os.setresgid(uid, uid, uid)
                    os.setresuid(uid, uid, uid)
                    for target, fd in enumerate(stdio):
                        os.dup2(fd, target)  # the copies are inheritable
                    os.chdir(cwd)
                    child.exec_first(executables, argv, env)
                except BaseException as exc:
                    os.write(error_write, str(exc).encode(errors="replace")[:4000])
                finally:
                    os._exit(127)
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
            raise OSError(failure.decode(errors="replace"))
        return pid

    def _kill(self) -> None:
        """SIGKILL everything of this slot's uid, from a child that becomes it."""
        if self.killer or (self.pid == 0 and self.job_id is None):
            return
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setresgid(self.uid, self.uid, self.uid)
                os.setresuid(self.uid, self.uid, self.uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        self.killer = pid

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break  # nothing of the function is left
            if pid == 0:
                if self.status is not None and not self.killer:
                    self._kill()  # the function ended but left processes behind
                return
            if pid == self.pid:
                self.status = status
                self.pid = 0
            elif pid == self.killer:
                self.killer = 0
        if self.job_id is not None and self.status is not None:
            oom = self.cgroups.oom_killed_since_last(self.index) if self.cgroups else False
            self._refresh_private_dirs()
            self._refresh_ipc()
            job_id, self.job_id = self.job_id, None
            self._report(job_id, os.waitstatus_to_exitcode(self.status), "", oom)

    def _refresh_private_dirs(self) -> None:
        """A fresh tmpfs where the function wrote anything (the next function of this uid
        must not find it), with the exposed folders it holds mounted back."""
        for folder in self.private_dirs:
            with contextlib.suppress(OSError):
                if _inodes_used(folder) > self.fresh_inodes.get(folder, 1):
                    self._renew(folder)

    def _renew(self, folder: str) -> None:
        exposed = [path for path in self.exposed if child.inside(path, folder)]
        trees = [(path, linux.clone_tree(path)) for path in exposed]
        try:
            linux.umount(folder)
            child.private_tmpfs(folder, self.tmpfs_mb)
            child.attach_trees(trees)
        finally:
            for _, tree in trees:
                os.close(tree)

    def _refresh_ipc(self) -> None:
        """A new IPC namespace when the function left System V segments, semaphores or
        queues, or POSIX message queues, behind (they outlive processes); the old one goes
        with its last user. Raises OSError when that fails: the slot must end then."""
        if linux.sysv_ipc_in_use() or self._mqueues_in_use():
            self.new_ipc()

    def _mqueues_in_use(self) -> bool:
        if self.mqueue < 0:
            return True  # cannot tell
        try:
            return bool(os.listdir(self.mqueue))
        except OSError:
            return True

    def new_ipc(self) -> None:
        """Enter a new IPC namespace, and open the root of its own message queue filesystem
        (an mqueue mount shows the queues of its mounter's namespace): mounted nowhere, or
        on /dev/mqueue over the previous one where the host has that folder."""
        linux.unshare(linux.CLONE_NEWIPC)
        if self.mqueue >= 0:
            os.close(self.mqueue)
            self.mqueue = -1
        try:
            mount = linux.new_mount("mqueue")
        except OSError:
            if self.cover_mqueue:
                raise
            return  # then every function gets a new namespace
        try:
            self.mqueue = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=mount)
            if self.cover_mqueue:
                if self.mqueue_covered:
                    linux.umount(MQUEUE)
                linux.attach_tree(mount, MQUEUE)
                self.mqueue_covered = True
        finally:
            os.close(mount)

    def _report(self, job_id: int, code: int, error: str, oom: bool = False) -> None:
        wire.send(
            self.sock,
            {
                "op": "exit",
                "id": job_id,
                "code": code,
                "oom": oom,
                "error": error,
                "pid": self.last_pid,
            },
        )


def _inodes_used(folder: str) -> int:
    usage = os.statvfs(folder)
    return usage.f_files - usage.f_ffree


def _fork() -> int:
    try:
        return linux.fork_raw()
    except OSError:
        return os.fork()


def run(slot: Slot, confinement: child.Confinement) -> None:
    """The slot process's life (in the spawner's forked child); never returns."""
    try:
        signal.set_wakeup_fd(-1)
        # Every function starts with what a command expects (Python ignores these); the
        # slot's own writes never raise SIGPIPE (MSG_NOSIGNAL).
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
        os.setgroups([])  # its lookups as a function's uid must not use root's groups
        child.private_mounts(confinement)
        slot.new_ipc()
        resource.setrlimit(resource.RLIMIT_NPROC, (slot.pids_max, slot.pids_max))
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
        slot.serve()
    finally:
        os._exit(0)
