"""The agent's end of one socket to a spawner process (the spawner itself or one of its
slots): ordered sends that never block the event loop, each received message handed to a
callback, and the peer's end noticed; and a ``Child`` started through one."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any

from hodei.agent import sandbox_wire as wire
from hodei.agent.sandbox_types import Exit
from hodei.errors import SpawnerFailed

Handler = Callable[[dict[str, Any], list[int]], None]


class Channel:
    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_message: Handler,
        on_eof: Callable[[], None],
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.loop = loop
        self.on_message = on_message
        self.on_eof = on_eof
        self.backlog: list[tuple[bytes, list[int]]] = []
        self.closed = False
        loop.add_reader(sock.fileno(), self._readable)

    def send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        """Send, or queue when the peer is behind (its fds duplicated: the caller closes its
        own at once). Raises SpawnerFailed when the peer is gone."""
        if self.closed:
            raise SpawnerFailed("the spawner is gone")
        data = wire.encode(message)
        if len(data) > wire.MAX_MESSAGE:
            raise SpawnerFailed(f"command and environment too large ({len(data)} bytes)")
        if not self.backlog:
            try:
                self.sock.sendmsg([data], wire.ancillary(fds or []))
                return
            except BlockingIOError:
                self.loop.add_writer(self.sock.fileno(), self._writable)
            except OSError as exc:
                raise SpawnerFailed(f"the spawner is gone: {exc}") from exc
        self.backlog.append((data, [os.dup(fd) for fd in fds or []]))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        if self.backlog:
            self.loop.remove_writer(self.sock.fileno())
        for _, fds in self.backlog:
            for fd in fds:
                os.close(fd)
        self.backlog.clear()
        self.sock.close()

    def _writable(self) -> None:
        while self.backlog:
            data, fds = self.backlog[0]
            try:
                self.sock.sendmsg([data], wire.ancillary(fds))
            except BlockingIOError:
                return
            except OSError:
                break
            self.backlog.pop(0)
            for fd in fds:
                os.close(fd)
        self.loop.remove_writer(self.sock.fileno())

    def _readable(self) -> None:
        while not self.closed:
            try:
                received = wire.receive(self.sock)
            except EOFError:
                self.close()
                self.on_eof()
                return
            if received is None:
                return
            self.on_message(*received)


class Child:
    """A started function process. ``stdin``/``stdout``/``stderr`` are non-blocking pipe
    ends the caller owns (``feed`` and ``drain`` use and close them; stdin is -1 when not
    asked for)."""

    def __init__(
        self, channel: Channel, job_id: int, slot: int, stdin: int, stdout: int, stderr: int
    ):
        self.channel = channel
        self.id = job_id
        self.slot = slot  # the uid slot it holds (-1: unsandboxed)
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.exited: asyncio.Future[Exit] = asyncio.get_running_loop().create_future()

    async def wait(self) -> Exit:
        """The exit, once the process and everything it started are gone."""
        return await asyncio.shield(self.exited)

    def kill(self) -> None:
        """SIGKILL the process and everything it started; ``wait()`` then reports it."""
        if not self.exited.done() and not self.channel.closed:
            self.channel.send({"op": "kill", "id": self.id})
