"""The agent's spawner: a small, long-lived process that starts function processes for it.

``python -m hodei.agent.sandbox_spawner FD``: the agent starts it once and talks to it over
the SOCK_SEQPACKET socket FD (JSON messages, file descriptors as SCM_RIGHTS). Forking this
small process is cheap where forking the agent (gRPC threads, hundreds of MB mapped) is
not, and the per-function steps (namespaces, cgroup, rlimits, uid) run in its child, never
in the agent. It reaps what it starts (it is a child subreaper), ends whatever a function
left when the function exits, and reports the exit once all of it is gone.

Messages (agent -> spawner): ``config`` (first), ``spawn`` (+ stdin, stdout, stderr and
optionally a network namespace fd), ``kill``, ``endpoint``. Spawner -> agent: ``hello``
(what it enforces, or why it cannot), ``exit``, ``endpoint`` (+ listener and namespace
fds). EOF from the agent: kill everything, clean up, exit.
"""

from __future__ import annotations

import array
import collections
import contextlib
import json
import os
import resource
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from hodei.agent import sandbox_cgroup as cgroup
from hodei.agent import sandbox_child as child
from hodei.agent import sandbox_linux as linux
from hodei.agent import sandbox_uids as uids

MAX_MESSAGE = 256 * 1024
MAX_FDS = 8
RECHECK_MS = 100  # how often leftovers being killed are looked at again, besides events


@dataclass(eq=False)
class Job:
    id: int
    pid: int
    slot: int | None
    error_fd: int
    status: int | None = None
    events_fd: int = -1
    killer: int = 0


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
        self.jobs: dict[int, Job] = {}
        self.by_pid: dict[int, Job] = {}
        self.killers: dict[int, Job] = {}
        self.waiting: dict[int, Job] = {}  # cgroup.events fd -> job whose leftovers die
        self.uid_locks: dict[int, int] = {}
        self.uids: list[int] = []
        self.free: collections.deque[int] = collections.deque()
        self.cgroups: cgroup.SlotCgroups | None = None
        self.clone_into_cgroup = False
        self.host_netns = -1
        self.empty_netns = -1
        self.poller = select.poll()

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
            self.host_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            linux.unshare(linux.CLONE_NEWNET)
            self.empty_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            linux.setns(self.host_netns, linux.CLONE_NEWNET)
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
        self.free.extend(range(len(self.uids)))
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
            "clone_into_cgroup": self.clone_into_cgroup,
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
                child._private_mounts(self.confinement)
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
        if root == "off":
            return 0
        mount = cgroup.cgroup2_mount()
        if mount is None:
            return 0
        slots = cgroup.SlotCgroups(mount, root or os.path.join(mount, "hodei"), self.config["mark"])
        try:
            reaped = slots.create()
        except OSError as exc:
            print(f"hodei spawner: no cgroups ({exc}); rlimits only", file=sys.stderr)
            return 0
        self.cgroups = slots
        fd = slots.prepare(0, self.pids_max, 0, 0)
        try:
            pid = linux.fork_into_cgroup(fd)
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
        self.poller.register(self.sock.fileno(), select.POLLIN)
        self.poller.register(wakeup_read, select.POLLIN)
        while True:
            events = self.poller.poll(RECHECK_MS if self.waiting else None)
            for fd, _ in events:
                if fd == wakeup_read:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wakeup_read, 4096)
            self._reap()
            if self.waiting:
                for fd, job in list(self.waiting.items()):
                    if not cgroup.populated(fd):
                        self._finish(job)
            if any(fd == self.sock.fileno() for fd, _ in events) and not self._read_requests():
                self._shutdown()
                return

    def _read_requests(self) -> bool:
        """Handle what the agent sent; False once it is gone."""
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(
                    MAX_MESSAGE,
                    socket.CMSG_SPACE(MAX_FDS * 4),
                    socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT,
                )
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            fds = array.array("i")
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            message = json.loads(data)
            op = message["op"]
            if op == "spawn":
                self._spawn(message, list(fds))
            elif op == "kill":
                self._kill(message["id"])
            elif op == "endpoint":
                self._endpoint(message)

    def _send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        # Blocking: the agent reads promptly, and an exit must never be dropped.
        with contextlib.suppress(OSError):  # the agent is gone; EOF ends the loop
            self.sock.sendmsg([data], ancillary)

    # -- spawn -----------------------------------------------------------------------------

    def _spawn(self, message: dict[str, Any], fds: list[int]) -> None:
        job_id = message["id"]
        stdio = (fds[0], fds[1], fds[2])
        netns = fds[3] if message.get("netns") and len(fds) > 3 else -1
        try:
            if self.sandboxed:
                self._spawn_sandboxed(job_id, message, stdio, netns)
            else:
                self._spawn_plain(job_id, message, stdio)
        except OSError as exc:
            self._send(
                {"op": "exit", "id": job_id, "code": 127, "oom": False, "error": str(exc), "pid": 0}
            )
        finally:
            for fd in fds:
                os.close(fd)

    def _spawn_sandboxed(
        self, job_id: int, message: dict[str, Any], stdio: tuple[int, int, int], netns: int
    ) -> None:
        if not self.free:
            raise OSError(f"no free function uid ({len(self.uids)} in use)")
        slot = self.free.popleft()
        pids = int(message.get("pids") or self.pids_max)
        memory_mb = int(message.get("memory_mb", 0))
        cgroup_fd = -1
        try:
            if self.cgroups is not None:
                cgroup_fd = self.cgroups.prepare(
                    slot, pids, memory_mb, int(message.get("cpu_millicores", 0))
                )
            if netns < 0 and not message.get("network"):
                netns = self.empty_netns
            launch = child.Launch(
                argv=message["argv"],
                env=message["env"],
                cwd=message.get("cwd") or self.cwd,
                uid=self.uids[slot],
                stdio=stdio,
                netns_fd=netns,
                cgroup_procs=(
                    os.path.join(self.cgroups.path(slot), "cgroup.procs")
                    if self.cgroups is not None and not self.clone_into_cgroup
                    else ""
                ),
                nproc=pids,
                data_bytes=memory_mb * 1024 * 1024,
            )
            self._fork(job_id, slot, launch, cgroup_fd if self.clone_into_cgroup else -1)
        except BaseException:
            self.free.appendleft(slot)
            raise
        finally:
            if cgroup_fd >= 0:
                os.close(cgroup_fd)

    def _spawn_plain(
        self, job_id: int, message: dict[str, Any], stdio: tuple[int, int, int]
    ) -> None:
        launch = child.Launch(
            argv=message["argv"],
            env=message["env"],
            cwd=message.get("cwd") or self.cwd,
            uid=None,
            stdio=stdio,
            netns_fd=-1,
            cgroup_procs="",
            nproc=0,
            data_bytes=int(message.get("memory_mb", 0)) * 1024 * 1024,
        )
        if launch.cwd != self.cwd:
            self._fork(job_id, None, launch, -1)
            return
        # The fast path: vfork-based, no Python in the child. The memory limit is set from
        # outside right after; the child has run for microseconds by then.
        pid = os.posix_spawnp(
            launch.argv[0],
            launch.argv,
            launch.env,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, n) for n, fd in enumerate(stdio)],
            setsid=True,
            setsigdef=child.RESET_SIGNALS,
        )
        if launch.data_bytes > 0:
            limit = launch.data_bytes
            with contextlib.suppress(OSError):
                resource.prlimit(pid, resource.RLIMIT_DATA, (limit, limit))
        self._track(Job(job_id, pid, None, -1))

    def _fork(self, job_id: int, slot: int | None, launch: child.Launch, cgroup_fd: int) -> None:
        error_read, error_write = os.pipe2(os.O_CLOEXEC)
        try:
            pid = linux.fork_into_cgroup(cgroup_fd) if cgroup_fd >= 0 else os.fork()
        except BaseException:
            os.close(error_read)
            os.close(error_write)
            raise
        if pid == 0:
            child.run(launch, self.confinement, error_write)
        os.close(error_write)
        self._track(Job(job_id, pid, slot, error_read))

    def _track(self, job: Job) -> None:
        self.jobs[job.id] = job
        self.by_pid[job.pid] = job

    # -- end -------------------------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job = self.by_pid.pop(pid, None)
            if job is not None:
                job.status = status
                self._main_exited(job)
            killed_for = self.killers.pop(pid, None)
            if killed_for is not None:
                killed_for.killer = 0
                if killed_for.status is not None:
                    self._finish(killed_for)

    def _main_exited(self, job: Job) -> None:
        """The function's own process ended: end what it left, then report."""
        if job.slot is None:
            with contextlib.suppress(OSError):
                os.killpg(job.pid, signal.SIGKILL)
            self._finish(job)
        elif self.cgroups is not None:
            job.events_fd = self.cgroups.events_fd(job.slot)
            if not cgroup.populated(job.events_fd):
                self._finish(job)
                return
            self.cgroups.kill(job.slot)
            self.waiting[job.events_fd] = job
            self.poller.register(job.events_fd, select.POLLPRI)
        elif not job.killer:
            self._start_killer(job)

    def _start_killer(self, job: Job) -> None:
        assert job.slot is not None
        pid = os.fork()
        if pid == 0:
            uids.kill_all_of(self.uids[job.slot])
        job.killer = pid
        self.killers[pid] = job

    def _kill(self, job_id: int) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            return
        if job.slot is None:
            with contextlib.suppress(OSError):
                os.killpg(job.pid, signal.SIGKILL)
        elif self.cgroups is not None:
            self.cgroups.kill(job.slot)
        elif not job.killer:
            self._start_killer(job)

    def _finish(self, job: Job) -> None:
        if self.jobs.pop(job.id, None) is None:
            return
        if job.events_fd >= 0:
            if self.waiting.pop(job.events_fd, None) is not None:
                self.poller.unregister(job.events_fd)
            os.close(job.events_fd)
        error = ""
        if job.error_fd >= 0:
            os.set_blocking(job.error_fd, False)
            with contextlib.suppress(BlockingIOError):
                error = os.read(job.error_fd, 4096).decode(errors="replace")
            os.close(job.error_fd)
        oom = False
        if job.slot is not None:
            if self.cgroups is not None:
                oom = self.cgroups.oom_killed_since_last(job.slot)
            self.free.append(job.slot)
        status = job.status if job.status is not None else 0
        self._send(
            {
                "op": "exit",
                "id": job.id,
                "code": os.waitstatus_to_exitcode(status),
                "oom": oom,
                "error": error,
                "pid": job.pid,
            }
        )

    def _endpoint(self, message: dict[str, Any]) -> None:
        """A listening socket on 127.0.0.1:port in a new network namespace whose only
        interface is loopback; the function joins it and reaches that and nothing else."""
        listener: socket.socket | None = None
        netns = -1
        try:
            linux.unshare(linux.CLONE_NEWNET)
            try:
                linux.loopback_up()
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listener.bind(("127.0.0.1", int(message["port"])))
                listener.listen(64)
                netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            finally:
                linux.setns(self.host_netns, linux.CLONE_NEWNET)
            self._send(
                {"op": "endpoint", "id": message["id"], "error": ""}, [listener.fileno(), netns]
            )
        except OSError as exc:
            self._send({"op": "endpoint", "id": message["id"], "error": str(exc)})
        finally:
            if listener is not None:
                listener.close()
            if netns >= 0:
                os.close(netns)

    def _shutdown(self) -> None:
        """The agent is gone: nothing it started may outlive it."""
        for job in list(self.jobs.values()):
            self._kill(job.id)
        deadline = time.monotonic() + 3.0
        while (self.by_pid or self.killers) and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.005)
                continue
            ended = self.by_pid.pop(pid, None)
            if ended is not None and ended.slot is not None and self.cgroups is None:
                self._start_killer(ended)
            if pid in self.killers:
                del self.killers[pid]
        if self.cgroups is not None:
            self.cgroups.remove()
        uids.release(self.uid_locks)


def _refusal(reason: str) -> dict[str, Any]:
    return {"op": "hello", "ok": False, "reason": reason}


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent's drain decides, not a Ctrl-C
    sock = socket.socket(fileno=int(sys.argv[1]))
    sock.set_inheritable(False)
    config = json.loads(sock.recv(MAX_MESSAGE))
    spawner = Spawner(sock, config)
    hello = spawner.start()
    spawner._send(hello)
    if hello["ok"]:
        spawner.serve()


if __name__ == "__main__":
    main()
