"""Starting function processes, sandboxed: the agent's side of its spawner.

``Sandbox.start(config)`` starts the spawner (``sandbox_spawner``, a small long-lived
process) once; ``await sandbox.spawn(request)`` starts one function process and returns a
``Child`` (its pipes, ``wait()``, ``kill()``). The same call starts a one-shot stdio
function and a long-lived instance; ``await sandbox.endpoint()`` gives an instance a
listening socket it alone can reach (see ``Endpoint``).

Sandboxed (``config.sandboxed``, needs root), each function process runs under a uid of
its own (one per concurrent function; never root), started by that uid's slot process
(``sandbox_slot``: forked once by the spawner, the agent talks to it directly), inheriting
its set-up: private tmpfs folders (``/tmp``...), a ``/proc`` that shows it only its own
processes, masked paths (the Docker socket), no network unless the request asks for it,
RLIMIT_NPROC, no new privileges, the slot's cgroup (pids, memory, cpu limits where the v2
hierarchy offers them); plus a hard RLIMIT_DATA and a new session of its own. Unsandboxed,
it runs as the agent's user in a new session, and only its process group is killed at its
end.

Whatever the child started is gone when ``wait()`` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from hodei.agent import sandbox_wire as wire
from hodei.agent.sandbox_channel import Channel, Child
from hodei.agent.sandbox_pipes import drain, feed
from hodei.agent.sandbox_types import (
    Endpoint,
    Exit,
    Limits,
    SandboxConfig,
    SpawnRequest,
    own_installation,
)
from hodei.errors import ConfigError, SpawnerFailed

__all__ = ["Child", "Endpoint", "Exit", "Limits", "Sandbox", "SandboxConfig", "SpawnRequest"]
__all__ += ["drain", "feed", "own_installation"]

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 60.0
UID_WAIT_S = 10.0  # for the uid of an instance stopped to free one


class Sandbox:
    """The agent's spawner and, sandboxed, its slots (one process per function uid, which
    the agent talks to directly). One per agent; ``start`` it, ``close`` it."""

    def __init__(
        self, process: subprocess.Popen[bytes], sock: socket.socket, hello: dict[str, Any]
    ):
        self.process = process
        self.sock: socket.socket | None = sock
        self.hello = hello
        self.sandboxed = bool(hello.get("sandboxed"))
        self.uids: list[int] = list(hello.get("uids", []))
        self.reaped = int(hello.get("reaped", 0))
        self.ids = itertools.count(1)
        self.main: Channel | None = None
        self.slots: list[Channel | None] = [None] * len(self.uids)
        self.starting: dict[int, asyncio.Future[Channel]] = {}  # slot -> its start
        self.preparing: asyncio.Task[None] | None = None
        self.idle = list(range(len(self.uids) - 1, -1, -1))  # a stack: warm slots first
        self.running: dict[int, Child] = {}  # job id -> child
        self.replies: dict[int, asyncio.Future[tuple[dict[str, Any], list[int]]]] = {}
        self.closed = False
        # Stops an idle lambda instance to free its uid (True when it stopped one); set
        # where jobs and instances share this sandbox (``share_uids``).
        self.reclaim: Callable[[], bool] | None = None
        self._uid_freed = asyncio.Event()

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
        ours.sendall(wire.encode(message))
        ours.settimeout(HELLO_TIMEOUT_S)
        try:
            hello = json.loads(ours.recv(wire.MAX_MESSAGE) or b"{}")
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
            cgroups = "no cgroup"
        return (
            f"sandboxed: uids {self.uids[0]}..{self.uids[-1]} (one per function), {cgroups}, "
            f"RLIMIT_NPROC/RLIMIT_DATA, private /tmp, /proc of its own processes, "
            f"no network unless the function asks"
        )

    def _channel(self) -> Channel:
        if self.main is None:
            if self.closed or self.sock is None:
                raise SpawnerFailed("the spawner is closed")
            loop = asyncio.get_running_loop()
            self.main = Channel(self.sock, loop, self._on_message, self._spawner_died)
        return self.main

    async def spawn(self, request: SpawnRequest, may_reclaim: bool = True) -> Child:
        """Start ``request.argv``. The returned child's ``wait()`` says how it ended (a
        command that could not start ends with code 127 and ``start_error``). Sandboxed,
        with every uid in use, an idle instance gives its uid up when ``may_reclaim``."""
        main = self._channel()
        slot = -1
        if self.sandboxed:
            slot = await self._claim_uid(may_reclaim)
        try:
            channel = await self._slot(slot) if slot >= 0 else main
            return self._start(channel, slot, request)
        except BaseException:
            if slot >= 0:
                self._free_uid(slot)
            raise

    async def _claim_uid(self, may_reclaim: bool) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + UID_WAIT_S
        while not self.idle:
            if not may_reclaim or self.reclaim is None or not self.reclaim():
                raise SpawnerFailed(f"no free function uid ({len(self.uids)} in use)")
            try:
                async with asyncio.timeout_at(deadline):
                    await self._uid_freed.wait()
            except TimeoutError:
                raise SpawnerFailed(
                    f"no free function uid ({len(self.uids)} in use; an idle instance "
                    f"stopped for one did not exit within {UID_WAIT_S:g}s)"
                ) from None
        return self.idle.pop()

    def _free_uid(self, slot: int) -> None:
        self.idle.append(slot)
        self._uid_freed.set()
        self._uid_freed = asyncio.Event()

    def _start(self, channel: Channel, slot: int, request: SpawnRequest) -> Child:
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
            child = Child(channel, job_id, slot, ours[0], ours[1], ours[2])
            self.running[job_id] = child
            channel.send(message, theirs)
        except BaseException:
            for fd in ours:
                if fd >= 0:
                    os.close(fd)
            self.running.pop(job_id, None)
            raise
        finally:
            for fd in theirs[:3]:
                os.close(fd)
        return child

    def prepare(self, count: int) -> asyncio.Task[None] | None:
        """Start the slot processes of the first ``count`` uids handed out, one after another
        in the background (None when unsandboxed): a slot's set-up (namespaces, mounts) takes
        milliseconds the kernel serialises, which a first burst of functions would wait for."""
        if not self.sandboxed or count <= 0 or self.closed:
            return None
        if self.preparing is None:
            self.preparing = asyncio.get_running_loop().create_task(self._prepare(count))
        return self.preparing

    async def _prepare(self, count: int) -> None:
        for index in self.idle[::-1][:count]:  # the order spawns take them in
            if self.closed:
                return
            with contextlib.suppress(SpawnerFailed):
                await self._slot(index)

    async def _slot(self, index: int) -> Channel:
        """Slot ``index``'s channel, its process forked by the spawner on first use (once,
        whoever asks first)."""
        channel = self.slots[index]
        if channel is not None and not channel.closed:
            return channel
        starting = self.starting.get(index)
        if starting is None:
            starting = self.starting[index] = asyncio.ensure_future(self._start_slot(index))
            starting.add_done_callback(lambda _: self.starting.pop(index, None))
        return await asyncio.shield(starting)

    async def _start_slot(self, index: int) -> Channel:
        message, fds = await self._ask({"op": "slot", "slot": index})
        if message.get("error") or not fds:
            for fd in fds:
                os.close(fd)
            raise SpawnerFailed(f"cannot start slot {index}: {message.get('error')}")
        channel = Channel(
            socket.socket(fileno=fds[0]),
            asyncio.get_running_loop(),
            self._on_message,
            lambda: self._slot_died(index),
        )
        self.slots[index] = channel
        return channel

    async def _ask(self, message: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        request_id = next(self.ids)
        reply: asyncio.Future[tuple[dict[str, Any], list[int]]] = (
            asyncio.get_running_loop().create_future()
        )
        self.replies[request_id] = reply
        try:
            self._channel().send({**message, "id": request_id})
        except BaseException:
            del self.replies[request_id]  # no answer will come, nor a failure to tell
            raise
        return await reply

    async def endpoint(self, port: int = 9001, network: bool = False) -> Endpoint:
        """A listener for one instance's private endpoint (see ``Endpoint``)."""
        if network or not self.sandboxed:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            listener.setblocking(False)
            return Endpoint(listener, f"127.0.0.1:{listener.getsockname()[1]}")
        message, fds = await self._ask({"op": "endpoint", "port": port})
        if message.get("error") or len(fds) < 2:
            for fd in fds:
                os.close(fd)
            raise SpawnerFailed(f"cannot make an endpoint: {message.get('error')}")
        listener = socket.socket(fileno=fds[0])
        listener.setblocking(False)
        return Endpoint(listener, f"127.0.0.1:{port}", fds[1])

    async def close(self) -> None:
        """Stop the spawner and its slots; they kill whatever still runs."""
        if self.closed:
            return
        self.closed = True
        if self.preparing is not None:
            self.preparing.cancel()
        for channel in self.slots:
            if channel is not None:
                channel.close()
        if self.main is not None:
            self.main.close()
        elif self.sock is not None:
            self.sock.close()
        self.sock = None
        for _ in range(600):
            if self.process.poll() is not None:
                break
            await asyncio.sleep(0.01)
        else:
            self.process.kill()
        self._fail_all("the spawner is closed")

    # -- messages --------------------------------------------------------------------------

    def _on_message(self, message: dict[str, Any], fds: list[int]) -> None:
        if message["op"] == "exit":
            child = self.running.pop(message["id"], None)
            if child is None:
                return
            if child.slot >= 0:
                self._free_uid(child.slot)
            if not child.exited.done():
                child.exited.set_result(
                    Exit(message["code"], message["oom"], message["error"], message["pid"])
                )
            return
        reply = self.replies.pop(message.get("id", 0), None)
        if reply is not None and not reply.done():
            reply.set_result((message, fds))
        else:
            for fd in fds:
                os.close(fd)

    def _slot_died(self, index: int) -> None:
        """A slot process is gone (killed from outside): its function is lost with it."""
        self.slots[index] = None
        if self.closed:
            return
        log.error("process spawner slot %d died", index)
        for job_id, child in list(self.running.items()):
            if child.slot == index:
                del self.running[job_id]
                self._free_uid(index)
                if not child.exited.done():
                    child.exited.set_result(Exit(-9))

    def _spawner_died(self) -> None:
        if self.closed:
            return
        self.closed = True
        log.error("the process spawner died (exit %s)", self.process.poll())
        for channel in self.slots:
            if channel is not None:
                channel.close()
        self._fail_all("the spawner died")

    def _fail_all(self, reason: str) -> None:
        for child in self.running.values():
            if not child.exited.done():
                child.exited.set_result(Exit(-9))
        self.running.clear()
        for reply in self.replies.values():
            if not reply.done():
                reply.set_exception(SpawnerFailed(reason))
        self.replies.clear()
