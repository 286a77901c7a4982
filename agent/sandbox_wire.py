"""The messages between the agent and its spawner processes: JSON in SOCK_SEQPACKET packets,
file descriptors alongside as SCM_RIGHTS. Stdlib only (the spawner imports it)."""

from __future__ import annotations

import array
import contextlib
import json
import socket

# typing stays unimported at run time: the spawner imports as little as it can, since a
# smaller process forks faster (mypy takes any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_MESSAGE = 256 * 1024
MAX_FDS = 8


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def ancillary(fds: list[int]) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    """Send on a blocking socket; a peer that is gone is not an error (its EOF is seen)."""
    with contextlib.suppress(OSError):
        sock.sendmsg([encode(message)], ancillary(fds or []), socket.MSG_NOSIGNAL)


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """The next message and its fds (close-on-exec), without blocking; None when there is
    none yet. Raises EOFError once the peer is gone."""
    try:
        data, extra, _, _ = sock.recvmsg(
            MAX_MESSAGE,
            socket.CMSG_SPACE(MAX_FDS * 4),
            socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT,
        )
    except BlockingIOError:
        return None
    except OSError as exc:
        raise EOFError from exc
    if not data:
        raise EOFError
    fds = array.array("i")
    for level, kind, payload in extra:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    message: dict[str, Any] = json.loads(data)
    return message, list(fds)
