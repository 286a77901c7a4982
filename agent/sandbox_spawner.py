"""The agent's spawner: a small, long-lived process that starts function processes for it.

``python -m hodei.agent.sandbox_spawner FD``: the agent starts it once and talks to it over
the SOCK_SEQPACKET socket FD (``sandbox_wire``). Forking a small process is cheap where
forking the agent (gRPC threads, hundreds of MB mapped) is not, and the per-function steps
run there, never in the agent.

Unsandboxed, it starts each function itself (vfork, no Python in the child) and kills its
process group when it exits. Sandboxed, it checks at start what the host allows (refusing
with a reason when it cannot confine), claims the function uids, makes the shared empty
network namespace and the agent's cgroup folder, and forks one *slot* process per uid
(``sandbox_slot``) on the agent's demand; the agent then talks to each slot directly.

Messages (agent -> spawner): ``config`` (first), ``spawn`` and ``kill`` (unsandboxed),
``slot``, ``endpoint``. Spawner -> agent: ``hello`` (what it enforces, or why it cannot),
``exit``, ``slot`` (+ the slot's socket), ``endpoint`` (+ listener and namespace fds). EOF
from the agent: kill everything, clean up, exit.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import socket
import sys
import time

from hodei.agent import sandbox_cgroup as cgroup
from hodei.agent import sandbox_child as child
from hodei.agent import sandbox_linux as linux
from hodei.agent import sandbox_slot as slots
from hodei.agent import sandbox_uids as uids
from hodei.agent import sandbox_wire as wire

# typing stays unimported at run time: the spawner imports as little as it can, since a
# smaller process forks faster (mypy takes any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Spawner:
    def __init__(self, sock: socket.socket, config: dict[str, Any]) -> None:
        self.sock = sock
        self.config = config
        self.sandboxed = bool(config["sandboxed"])
        private_dirs = tuple(config.get("private_dirs", ()))
        covers, exposed = child.plan_exposure(tuple(config.get("exposed_paths", ())), private_dirs)
        self.confinement = child.Confinement(
            private_dirs=private_dirs,
            hidden_paths=tuple(config.get("hidden_paths", ())),
            tmpfs_mb=int(config.get("tmpfs_mb", 64)),
            hide_processes=bool(config.get("hide_processes", True)),
            covers=covers,
            exposed=exposed,
        )
        self.pids_max = int(config.get("pids_max", 256))
        self.cwd = os.getcwd()
        self.jobs: dict[int, int] = {}  # unsandboxed: pid -> job id
        self.slot_pids: dict[int, int] = {}  # pid -> slot
        self.cleaners: dict[int, int] = {}  # pid -> slot whose uid it clears
        self.uid_locks: dict[int, int] = {}
        self.uids: list[int] = []
        self.cgroups: cgroup.SlotCgroups | None = None
        self.clone_into_cgroup = False
        self.netns: dict[str, int] = {}

    # -- start -----------------------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """Set up what the sandbox needs; the hello message (``ok`` false with a reason
        when this host cannot sandbox)."""
        linux.prctl(linux.PR_SET_DUMPABLE, 0)
        with contextlib.suppress(OSError):
            linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
        if not self.sandboxed:
            return {"op": "hello", "ok": True, "sandboxed": False, "reaped": 0}
        if os.geteuid() != 0:
            return _refusal(f"the agent is not root (uid {os.geteuid()})")
        try:
            self.netns["host"] = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            linux.unshare(linux.CLONE_NEWNET)
            self.netns["empty"] = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            linux.setns(self.netns["host"], linux.CLONE_NEWNET)
        except OSError as exc:
            return _refusal(f"no network namespaces ({exc})")
        base, count = int(self.config["uid_base"]), int(self.config["uid_count"])
        if base <= 0 < base + count and not self.config.get("allow_root"):
            return _refusal("the function uid range includes root (allow it explicitly)")
        try:
            self.uid_locks = uids.claim(base, count, int(self.config.get("uid_preferred", 0)))
        except OSError as exc:
            return _refusal(str(exc))
        self.uids = sorted(self.uid_locks)
        problem = self._probe(self.uids[0])
        if problem:
            uids.release(self.uid_locks)
            return _refusal(problem)
        reaped = self._sweep_uids()
        reaped += self._make_cgroups()
        return {
            "op": "hello",
            "ok": True,
            "sandboxed": True,
            "uids": self.uids,
            "cgroup": self.cgroups.base if self.cgroups else "",
            "controllers": list(self.cgroups.controllers) if self.cgroups else [],
            "reaped": reaped,
        }

    def _probe(self, uid: int) -> str:
        """Run the confinement steps once in a throwaway child (root in a user namespace,
        say, may mount but not become another uid): better refuse now than fail every
        function later. Returns what failed, or ""."""
        read, write = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            step = "no private mounts"
            try:
                child.private_mounts(self.confinement)
                step = "no IPC namespace with message queues of its own"
                linux.unshare(linux.CLONE_NEWIPC)
                if os.path.isdir(slots.MQUEUE):
                    os.close(linux.new_mount("mqueue"))
                step = f"cannot become the function uid {uid}"
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                os._exit(0)
            except BaseException as exc:
                os.write(write, f"{step} ({exc})".encode()[:1000])
                os._exit(1)
        os.close(write)
        message = os.read(read, 1000).decode(errors="replace")
        os.close(read)
        os.waitpid(pid, 0)
        return message

    def _sweep_uids(self) -> int:
        """Kill what runs under our uids: a dead agent that held them left it."""
        found = uids.processes_of(set(self.uids))
        for uid in found:
            pid = os.fork()
            if pid == 0:
                uids.kill_all_of(uid)
            os.waitpid(pid, 0)
        return sum(len(pids) for pids in found.values())

    def _make_cgroups(self) -> int:
        root = self.config.get("cgroup_root", "")
        mount = cgroup.cgroup2_mount()
        if root == "off" or mount is None:
            return 0
        slot_cgroups = cgroup.SlotCgroups(
            mount, root or os.path.join(mount, "hodei"), self.config["mark"]
        )
        try:
            reaped = slot_cgroups.create()
            fd = slot_cgroups.open(0)
        except OSError as exc:
            print(f"hodei spawner: no cgroups ({exc}); rlimits only", file=sys.stderr)
            return 0
        self.cgroups = slot_cgroups
        try:
            pid = linux.fork_raw(fd)
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            self.clone_into_cgroup = True
        except OSError:
            self.clone_into_cgroup = False
        finally:
            os.close(fd)
        return reaped

    # -- loop ------------------------------------------------------------------------------

    def serve(self) -> None:
        wakeup_read, wakeup_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.set_wakeup_fd(wakeup_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(wakeup_read, select.POLLIN)
        self.wakeup = (wakeup_read, wakeup_write)
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
                self._shutdown()
                return

    def _handle(self, message: dict[str, Any], fds: list[int]) -> None:
        op = message["op"]
        try:
            if op == "spawn":
                self._spawn(message, fds)
            elif op == "kill":
                self._kill(message["id"])
            elif op == "slot":
                self._slot(message)
            elif op == "endpoint":
                self._endpoint(message)
        finally:
            for fd in fds:
                os.close(fd)

    def _spawn(self, message: dict[str, Any], fds: list[int]) -> None:
        """Unsandboxed: the function as the agent's user, in a session of its own."""
        job_id = message["id"]
        try:
            if self.sandboxed:
                raise OSError("sandboxed functions are started by the slots")
            pid = child.start_process(
                message["argv"],
                message["env"],
                message.get("cwd") or self.cwd,
                (fds[0], fds[1], fds[2]),
            )
        except OSError as exc:
            self._exit(job_id, 127, str(exc), 0)
            return
        memory_mb = int(message.get("memory_mb", 0))
        if memory_mb > 0:
            limit = memory_mb * 1024 * 1024
            with contextlib.suppress(OSError):
                resource.prlimit(pid, resource.RLIMIT_DATA, (limit, limit))
        self.jobs[pid] = job_id

    def _kill(self, job_id: int) -> None:
        for pid, running in self.jobs.items():
            if running == job_id:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job_id = self.jobs.pop(pid, None)
            if job_id is not None:
                # What the function left in its process group goes with it.
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
                self._exit(job_id, os.waitstatus_to_exitcode(status), "", pid)
            index = self.slot_pids.pop(pid, None)
            if index is not None and status != 0:  # 0: it saw the agent go, and cleaned up
                self._slot_died(index)
            self.cleaners.pop(pid, None)

    def _slot_died(self, index: int) -> None:
        """A slot process ended while the agent lives (killed from outside, say): what its
        function started is orphaned under this subreaper; end it before the uid serves
        again."""
        cleaner = os.fork()
        if cleaner == 0:
            uids.kill_all_of(self.uids[index])
        self.cleaners[cleaner] = index

    def _exit(self, job_id: int, code: int, error: str, pid: int) -> None:
        wire.send(
            self.sock,
            {"op": "exit", "id": job_id, "code": code, "oom": False, "error": error, "pid": pid},
        )

    def _slot(self, message: dict[str, Any]) -> None:
        """Fork the slot process for uid number ``slot``; the agent gets its socket."""
        index = int(message["slot"])
        if (
            not self.sandboxed
            or not 0 <= index < len(self.uids)
            or index in self.slot_pids.values()
            or index in self.cleaners.values()
        ):
            wire.send(self.sock, {"op": "slot", "id": message["id"], "error": f"no slot {index}"})
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cgroup_fd = -1
        try:
            if self.cgroups is not None:
                cgroup_fd = self.cgroups.open(index)
            if cgroup_fd >= 0 and self.clone_into_cgroup:
                pid = linux.fork_raw(cgroup_fd)
            else:
                pid = os.fork()
            if pid == 0:
                self._become_slot(index, ours)
            self.slot_pids[pid] = index
            wire.send(
                self.sock, {"op": "slot", "id": message["id"], "error": ""}, [theirs.fileno()]
            )
        except OSError as exc:
            wire.send(self.sock, {"op": "slot", "id": message["id"], "error": str(exc)})
        finally:
            ours.close()
            theirs.close()
            if cgroup_fd >= 0:
                os.close(cgroup_fd)

    def _become_slot(self, index: int, sock: socket.socket) -> None:
        """In the forked child: drop what is the spawner's, serve as slot ``index``."""
        try:
            if self.cgroups is not None and not self.clone_into_cgroup:
                with open(os.path.join(self.cgroups.path(index), "cgroup.procs"), "w") as f:
                    f.write("0")
            keep = {0, 1, 2, sock.fileno(), *self.netns.values()}
            for name in os.listdir("/proc/self/fd"):
                if int(name) not in keep:
                    with contextlib.suppress(OSError):
                        os.close(int(name))
            slot = slots.Slot(
                sock,
                index,
                self.uids[index],
                self.netns,
                self.cgroups,
                self.pids_max,
                self.confinement,
            )
            slots.run(slot, self.confinement)
        finally:
            os._exit(1)

    def _endpoint(self, message: dict[str, Any]) -> None:
        """An instance's private endpoint: a listener alone in a network namespace."""
        try:
            listener, netns = linux.listener_in_new_netns(int(message["port"]), self.netns["host"])
        except OSError as exc:
            wire.send(self.sock, {"op": "endpoint", "id": message["id"], "error": str(exc)})
            return
        reply = {"op": "endpoint", "id": message["id"], "error": ""}
        wire.send(self.sock, reply, [listener.fileno(), netns])
        listener.close()
        os.close(netns)

    def _shutdown(self) -> None:
        """The agent is gone: nothing it started may outlive it. (Slots see their own EOF
        and kill what runs in them.)"""
        for pid in self.jobs:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while (self.jobs or self.slot_pids) and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.005)
                continue
            self.jobs.pop(pid, None)
            self.slot_pids.pop(pid, None)
            self.cleaners.pop(pid, None)
        if self.cgroups is not None:
            self.cgroups.remove()
        uids.release(self.uid_locks)


def _refusal(reason: str) -> dict[str, Any]:
    return {"op": "hello", "ok": False, "reason": reason}


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent's drain decides, not a Ctrl-C
    sock = socket.socket(fileno=int(sys.argv[1]))
    sock.set_inheritable(False)
    received = None
    while received is None:
        select.select([sock], [], [])
        received = wire.receive(sock)
    spawner = Spawner(sock, received[0])
    hello = spawner.start()
    wire.send(sock, hello)
    if hello["ok"]:
        spawner.serve()


if __name__ == "__main__":
    main()
