"""Starting function processes, sandboxed: the agent's side of its spawner.

``Sandbox.start(config)`` starts the spawner (``sandbox_spawner``, a small long-lived
process) once; ``await sandbox.spawn(request)`` starts one function process through it and
returns a ``Child`` (its pipes, ``wait()``, ``kill()``). The same call starts a one-shot
stdio function and a long-lived instance; ``await sandbox.endpoint()`` gives an instance
a listening socket it alone can reach (see ``Endpoint``).

Sandboxed (``config.sandboxed``, needs root), every function process runs under a uid of
its own (one per concurrent function; never root), in its own cgroup where cgroup v2
allows (pids, memory, cpu when the hierarchy offers them; always the kill-everything and
"is anything left" of v2), with RLIMIT_NPROC and RLIMIT_DATA, no new privileges, a new
session, private tmpfs folders (``/tmp``...), a ``/proc`` that shows it only its own
processes, masked paths (the Docker socket), and without the host network unless the
request asks for it. Unsandboxed, it runs as the agent's user in a new session, and only
its process group is killed at its end.

Whatever the child started is gone when ``wait()`` returns.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hodei.agent.identity import remember_uid, remembered_uid
from hodei.agent.settings import DEFAULT_HIDDEN, AgentSettings
from hodei.errors import ConfigError, SpawnerFailed

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
MAX_MESSAGE = 256 * 1024
HELLO_TIMEOUT_S = 60.0


def own_installation() -> tuple[str, ...]:
    """The agent's interpreter, its environment and the folder Hodei is imported from."""
    import hodei

    project = os.path.dirname(os.path.dirname(os.path.realpath(hodei.__file__)))
    return (sys.base_prefix, sys.prefix, project)


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """How the agent's function processes are confined (settings ``process_*``)."""

    sandboxed: bool = True
    mark: str = "hodei"  # names the agent's cgroup folder; see identity.agent_mark
    uid_base: int = 2_147_000_000  # above the ranges useradd, systemd and Docker hand out
    uid_count: int = 64  # concurrent functions (and instances) at most
    uid_preferred: int = 0  # the uid this agent held in its previous life
    allow_root: bool = False
    pids_max: int = 256
    tmpfs_mb: int = 64
    private_dirs: tuple[str, ...] = ("/tmp", "/var/tmp", "/dev/shm")
    hidden_paths: tuple[str, ...] = DEFAULT_HIDDEN
    hide_processes: bool = True
    cgroup_root: str = ""  # "" = <cgroup2 mount>/hodei; "off" = no cgroups
    cwd: str = "/tmp"
    # Folders functions may read even where an ancestor is closed to their uid: the
    # agent's own Python and Hodei (a Python runtime client runs from them).
    exposed_paths: tuple[str, ...] = field(default_factory=lambda: own_installation())


@dataclass(frozen=True, slots=True)
class Limits:
    memory_mb: int = 0  # 0 = none; RLIMIT_DATA (MemoryError) and cgroup memory.max
    cpu_millicores: int = 0  # 0 = none; cgroup cpu.max where the cpu controller is on
    pids: int = 0  # 0 = the sandbox's pids_max


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A listening TCP socket for one instance. Sandboxed and without network it lives in
    a network namespace of its own whose only interface is loopback: pass it to ``spawn``
    and the instance reaches ``address`` (127.0.0.1:port) and nothing else. Otherwise it
    listens on the host's loopback at an ephemeral port (``netns_fd`` -1), where any local
    process may connect: authenticate the peer. The caller closes it."""

    listener: socket.socket
    address: str
    netns_fd: int = -1

    def close(self) -> None:
        self.listener.close()
        if self.netns_fd >= 0:
            os.close(self.netns_fd)


@dataclass(frozen=True, slots=True)
class SpawnRequest:
    argv: Sequence[str]
    env: Mapping[str, str]  # the whole environment: nothing of the agent's is inherited
    cwd: str = ""  # "" = the sandbox's cwd (a private /tmp when sandboxed)
    network: bool = False  # True: the host's network; False: none at all
    limits: Limits = field(default_factory=Limits)
    endpoint: Endpoint | None = None  # join this endpoint's namespace (network False)
    stdin: bool = True  # False: /dev/null


@dataclass(frozen=True, slots=True)
class Exit:
    code: int  # like Popen.returncode: >= 0 the exit status, < 0 killed by that signal
    oom_killed: bool = False
    start_error: str = ""  # non-empty: the command never ran (not found, not executable)
    pid: int = 0


class Child:
    """A started function process. ``stdin``/``stdout``/``stderr`` are non-blocking pipe
    ends the caller owns (``feed`` and ``drain`` use and close them; stdin is -1 when not
    asked for)."""

    def __init__(self, sandbox: Sandbox, job_id: int, stdin: int, stdout: int, stderr: int):
        self.sandbox = sandbox
        self.id = job_id
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.exited: asyncio.Future[Exit] = asyncio.get_running_loop().create_future()

    async def wait(self) -> Exit:
        """The exit, once the process and everything it started are gone."""
        return await asyncio.shield(self.exited)

    def kill(self) -> None:
        """SIGKILL the process and everything it started; ``wait()`` then reports it."""
        if not self.exited.done():
            self.sandbox._post({"op": "kill", "id": self.id})


class Sandbox:
    """The agent's spawner. One per agent; ``start`` it, ``close`` it."""

    def __init__(
        self, process: subprocess.Popen[bytes], sock: socket.socket, hello: dict[str, Any]
    ):
        self.process = process
        self.sock = sock
        self.hello = hello
        self.sandboxed = bool(hello.get("sandboxed"))
        self.uids: list[int] = list(hello.get("uids", []))
        self.reaped = int(hello.get("reaped", 0))
        self.ids = itertools.count(1)
        self.children: dict[int, Child] = {}
        self.endpoints: dict[int, asyncio.Future[tuple[dict[str, Any], list[int]]]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.backlog: list[tuple[bytes, list[int]]] = []
        self.closed = False

    @classmethod
    def start(cls, config: SandboxConfig) -> Sandbox:
        """Start the spawner and check what it can enforce. Raises ConfigError when
        sandboxing was asked for and this host or user cannot provide it."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: os.environ[k] for k in ("PATH", "PYTHONPATH", "LANG") if k in os.environ}
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "hodei.agent.sandbox_spawner", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env=env,
                cwd=config.cwd if os.path.isdir(config.cwd) else "/",
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            theirs.close()
        message = {"op": "config", **{k: getattr(config, k) for k in config.__slots__}}
        ours.sendall(json.dumps(message).encode())
        ours.settimeout(HELLO_TIMEOUT_S)
        try:
            hello = json.loads(ours.recv(MAX_MESSAGE) or b"{}")
        except (OSError, ValueError) as exc:
            hello = {"ok": False, "reason": f"the spawner did not start ({exc})"}
        if not hello.get("ok"):
            ours.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
            reason = hello.get("reason") or f"the spawner exited with {process.poll()}"
            raise ConfigError(
                f"the process runtime cannot sandbox functions here: {reason}. Run the agent "
                "as root, or accept unsandboxed functions (running as the agent's user, "
                "with its network and files) with --process-sandbox off"
            )
        ours.setblocking(False)
        return cls(process, ours, hello)

    @property
    def description(self) -> str:
        """One line: what a function process is held to."""
        if not self.sandboxed:
            return (
                f"UNSANDBOXED: functions run as the agent's user (uid {os.geteuid()}) with its "
                "network, files and processes in reach"
            )
        controllers = self.hello.get("controllers") or []
        where = self.hello.get("cgroup") or ""
        if where:
            cgroups = f"cgroup v2 {where} ({'+'.join(controllers) or 'no controllers'})"
        else:
            cgroups = "no cgroup (uid-wide kill)"
        return (
            f"sandboxed: uids {self.uids[0]}..{self.uids[-1]} (one per function), {cgroups}, "
            f"RLIMIT_NPROC/RLIMIT_DATA, private /tmp, /proc of its own processes, "
            f"no network unless the function asks"
        )

    def _attach(self) -> None:
        loop = asyncio.get_running_loop()
        if self.loop is None:
            self.loop = loop
            loop.add_reader(self.sock.fileno(), self._readable)

    async def spawn(self, request: SpawnRequest) -> Child:
        """Start ``request.argv``. The returned child's ``wait()`` says how it ended (a
        command that could not start ends with code 127 and ``start_error``)."""
        self._attach()
        if self.closed:
            raise SpawnerFailed("the spawner is closed")
        job_id = next(self.ids)
        ours: list[int] = []
        theirs: list[int] = []
        try:
            if request.stdin:
                read, write = os.pipe2(os.O_CLOEXEC)
                ours.append(write)
                theirs.append(read)
            else:
                ours.append(-1)
                theirs.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            for _ in range(2):
                read, write = os.pipe2(os.O_CLOEXEC)
                ours.append(read)
                theirs.append(write)
            for fd in ours:
                if fd >= 0:
                    os.set_blocking(fd, False)
            message: dict[str, Any] = {
                "op": "spawn",
                "id": job_id,
                "argv": list(request.argv),
                "env": dict(request.env),
                "cwd": request.cwd,
                "network": request.network,
                "memory_mb": request.limits.memory_mb,
                "cpu_millicores": request.limits.cpu_millicores,
                "pids": request.limits.pids,
            }
            if request.endpoint is not None and request.endpoint.netns_fd >= 0:
                message["netns"] = True
                theirs.append(request.endpoint.netns_fd)
            data = json.dumps(message, separators=(",", ":")).encode()
            if len(data) > MAX_MESSAGE:
                raise SpawnerFailed(f"command and environment too large ({len(data)} bytes)")
            child = Child(self, job_id, ours[0], ours[1], ours[2])
            self.children[job_id] = child
            self._send(data, theirs)
        except BaseException:
            for fd in ours:
                if fd >= 0:
                    os.close(fd)
            self.children.pop(job_id, None)
            raise
        finally:
            for fd in theirs[:3]:
                os.close(fd)
        return child

    async def endpoint(self, port: int = 9001, network: bool = False) -> Endpoint:
        """A listener for one instance's private endpoint (see ``Endpoint``)."""
        self._attach()
        if network or not self.sandboxed:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            listener.setblocking(False)
            return Endpoint(listener, f"127.0.0.1:{listener.getsockname()[1]}")
        request_id = next(self.ids)
        reply: asyncio.Future[tuple[dict[str, Any], list[int]]] = (
            asyncio.get_running_loop().create_future()
        )
        self.endpoints[request_id] = reply
        self._post({"op": "endpoint", "id": request_id, "port": port})
        message, fds = await reply
        if message.get("error") or len(fds) < 2:
            for fd in fds:
                os.close(fd)
            raise SpawnerFailed(f"cannot make an endpoint: {message.get('error')}")
        listener = socket.socket(fileno=fds[0])
        listener.setblocking(False)
        return Endpoint(listener, f"127.0.0.1:{port}", fds[1])

    async def close(self) -> None:
        """Stop the spawner; it kills whatever still runs."""
        if self.closed:
            return
        self.closed = True
        if self.loop is not None:
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        process = self.process
        for _ in range(500):
            if process.poll() is not None:
                break
            await asyncio.sleep(0.01)
        else:
            process.kill()
        self._fail_all("the spawner is closed")

    # -- messages --------------------------------------------------------------------------

    def _post(self, message: dict[str, Any]) -> None:
        if not self.closed:
            self._send(json.dumps(message, separators=(",", ":")).encode(), [])

    def _send(self, data: bytes, fds: list[int]) -> None:
        if self.backlog:
            self.backlog.append((data, fds and [os.dup(fd) for fd in fds]))
            return
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            self.sock.sendmsg([data], ancillary)
        except BlockingIOError:
            # The spawner is behind; keep order, send when it reads again. The fds are
            # duplicated because the caller closes its copies at once.
            self.backlog.append((data, [os.dup(fd) for fd in fds]))
            assert self.loop is not None
            self.loop.add_writer(self.sock.fileno(), self._writable)
        except OSError as exc:
            raise SpawnerFailed(f"the spawner is gone: {exc}") from exc

    def _writable(self) -> None:
        while self.backlog:
            data, fds = self.backlog[0]
            ancillary = (
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            )
            try:
                self.sock.sendmsg([data], ancillary)
            except BlockingIOError:
                return
            except OSError:
                break
            self.backlog.pop(0)
            for fd in fds:
                os.close(fd)
        assert self.loop is not None
        self.loop.remove_writer(self.sock.fileno())

    def _readable(self) -> None:
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(
                    MAX_MESSAGE, socket.CMSG_SPACE(16), socket.MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._spawner_died()
                return
            fds = array.array("i")
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            message = json.loads(data)
            if message["op"] == "exit":
                child = self.children.pop(message["id"], None)
                if child is not None and not child.exited.done():
                    child.exited.set_result(
                        Exit(message["code"], message["oom"], message["error"], message["pid"])
                    )
            elif message["op"] == "endpoint":
                reply = self.endpoints.pop(message["id"], None)
                if reply is not None and not reply.done():
                    reply.set_result((message, list(fds)))
                else:
                    for fd in fds:
                        os.close(fd)

    def _spawner_died(self) -> None:
        if self.closed:
            return
        self.closed = True
        assert self.loop is not None
        self.loop.remove_reader(self.sock.fileno())
        log.error("the process spawner died (exit %s)", self.process.poll())
        self._fail_all("the spawner died")

    def _fail_all(self, reason: str) -> None:
        for child in self.children.values():
            if not child.exited.done():
                child.exited.set_result(Exit(-9))
        self.children.clear()
        for reply in self.endpoints.values():
            if not reply.done():
                reply.set_exception(SpawnerFailed(reason))
        self.endpoints.clear()


def agent_sandbox(settings: AgentSettings, mark: str, job_slots: int) -> Sandbox:
    """The agent's spawner as its settings say. Raises ConfigError when it cannot sandbox,
    or would run functions as root without ``process_allow_root``."""
    mode = settings.process_sandbox
    if mode not in ("on", "off"):
        raise ConfigError(f"process_sandbox: {mode!r} is neither 'on' nor 'off'")
    if mode == "off" and os.geteuid() == 0 and not settings.process_allow_root:
        raise ConfigError(
            "the process runtime would run functions unsandboxed as root: use "
            "--process-sandbox on, run the agent as another user, or --process-allow-root"
        )
    config = SandboxConfig(
        sandboxed=mode == "on",
        mark=mark,
        uid_base=settings.process_uid_base,
        uid_count=settings.process_uid_count or job_slots,
        uid_preferred=remembered_uid(settings.state_dir, settings.worker_id),
        allow_root=settings.process_allow_root,
        pids_max=settings.process_pids_max,
        tmpfs_mb=settings.process_tmpfs_mb,
        private_dirs=settings.process_private_dirs,
        hidden_paths=settings.process_hidden_paths,
        cgroup_root=settings.process_cgroup_root,
        exposed_paths=(*own_installation(), *settings.process_exposed_paths),
    )
    sandbox = Sandbox.start(config)
    if sandbox.uids:
        remember_uid(settings.state_dir, settings.worker_id, sandbox.uids[0])
    return sandbox


def feed(fd: int, data: bytes) -> asyncio.Future[None]:
    """Write ``data`` to the pipe ``fd`` and close it; a reader that went away is no error."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    view = memoryview(data)

    def finish() -> None:
        os.close(fd)
        if not done.done():
            done.set_result(None)

    def writable() -> None:
        nonlocal view
        try:
            while view:
                view = view[os.write(fd, view) :]
        except BlockingIOError:
            return
        except OSError:
            pass
        loop.remove_writer(fd)
        finish()

    def abandoned(future: asyncio.Future[None]) -> None:
        if future.cancelled():
            loop.remove_writer(fd)
            os.close(fd)

    try:
        while view:
            view = view[os.write(fd, view) :]
    except BlockingIOError:
        loop.add_writer(fd, writable)
        done.add_done_callback(abandoned)
        return done
    except OSError:
        pass
    finish()
    return done


def drain(fd: int, sink: Callable[[bytes], None]) -> asyncio.Future[None]:
    """Hand everything read from the pipe ``fd`` to ``sink`` until EOF, then close it."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            while True:
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    break
                sink(chunk)
                if len(chunk) < CHUNK:
                    return
        except BlockingIOError:
            return
        except OSError:
            pass
        loop.remove_reader(fd)
        os.close(fd)
        if not done.done():
            done.set_result(None)

    def abandoned(future: asyncio.Future[None]) -> None:
        if future.cancelled():
            loop.remove_reader(fd)
            os.close(fd)

    loop.add_reader(fd, readable)
    done.add_done_callback(abandoned)
    return done
