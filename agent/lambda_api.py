"""The AWS Lambda Runtime API (``2018-06-01``) the agent serves to one instance.

Each instance gets an endpoint of its own, on a listening socket that only it can reach (its
own network namespace, or a gateway address where the peer address names the container):
its ``next`` hands out only the invocations given to that instance, so no instance can pull
another function's work.

Runtime clients are strict (awslambdaric's native part crashes on a ``next`` answer that
lacks a header, or on a 500): ``next`` blocks until there is work and always answers 200
with every header; nothing here answers 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import socket
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from hodei.agent.runtime import CappedBuffer

log = logging.getLogger(__name__)

PREFIX = "/2018-06-01/runtime"
ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"
NO_DEADLINE_MS = 24 * 3600 * 1000  # what `Lambda-Runtime-Deadline-Ms` says without a timeout
MAX_ERROR_BODY = 1024 * 1024
MAX_ERROR_TEXT = 4096
CHUNK = 64 * 1024
# Loop turns a runtime's answer waits so that its result goes on first (_answer).
RESULT_FIRST_TURNS = 4
ROUTE = re.compile(rf"^{PREFIX}/invocation/(?P<id>[^/]+)/(?P<kind>response|error)$")


@dataclass(frozen=True, slots=True)
class Reply:
    """What the runtime answered for one invocation."""

    ok: bool
    body: bytes = b""
    truncated: bool = False
    error: str = ""


@dataclass(eq=False, slots=True)
class Invocation:
    id: str
    payload: bytes
    deadline_ms: int
    traceparent: str = ""
    reply: asyncio.Future[Reply] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def trace_id(traceparent: str) -> str:
    """``Lambda-Runtime-Trace-Id`` (X-Ray's form) of a W3C traceparent; a new root when the
    call carried none (the header must always be there)."""
    parts = traceparent.split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
        trace, parent, flags = parts[1], parts[2], parts[3]
        sampled = "1" if int(flags or "0", 16) & 1 else "0"
    else:
        trace, parent, sampled = secrets.token_hex(16), secrets.token_hex(8), "0"
    return f"Root=1-{trace[:8]}-{trace[8:]};Parent={parent};Sampled={sampled}"


def event_of(payload: bytes) -> tuple[bytes, str]:
    """The body and content type handed to the runtime. Lambda's events are JSON (no payload
    is ``{}``, as on AWS); anything else goes as opaque bytes, which the runtime clients
    pass to the handler undecoded instead of failing to parse them."""
    if not payload.strip():
        return b"{}", "application/json"
    try:
        json.loads(payload)
    except ValueError:
        return payload, "application/octet-stream"
    return payload, "application/json"


def error_of(body: bytes, header_type: str) -> str:
    """``errorType: errorMessage`` of a runtime's error report (JSON, as the clients send)."""
    message, kind = "", header_type
    with contextlib.suppress(ValueError, AttributeError):
        data = json.loads(body)
        message = str(data.get("errorMessage") or "")
        kind = str(data.get("errorType") or "") or kind
    if not message and not kind:
        message = body.decode("utf-8", errors="replace").strip()
    text = f"{kind}: {message}" if kind and message else kind or message or "unknown error"
    return text[:MAX_ERROR_TEXT]


class RuntimeEndpoint:
    """The Runtime API of one instance, at ``address``: served on a listening socket of
    its own (``serve``), or by a listener shared with other instances that hands each
    request to the endpoint of the instance that sent it (``handle``)."""

    def __init__(
        self,
        address: str,
        function_arn: str,
        output_cap_bytes: int,
        peer_allowed: Callable[[tuple[str, int]], Awaitable[bool]] | None = None,
    ) -> None:
        self.address = address
        self.function_arn = function_arn
        self.output_cap_bytes = output_cap_bytes
        self.peer_allowed = peer_allowed
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()  # the first `next` came
        self.init_error: asyncio.Future[str] = loop.create_future()
        self._pending: Invocation | None = None  # offered, not taken by `next` yet
        self._taken: Invocation | None = None  # handed out, not answered yet
        self._work = asyncio.Event()
        self._listener: Listener | None = None
        self._trusted: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()

    async def serve(self, sock: socket.socket) -> None:
        """Listen on ``sock`` for this instance alone."""
        self._listener = Listener(sock, self.handle)
        await self._listener.start()

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()

    def offer(self, invocation: Invocation) -> None:
        """Give the instance its next invocation; its answer resolves ``invocation.reply``."""
        self._pending = invocation
        self._work.set()

    def withdraw(self, reason: str) -> None:
        """The invocation ended without the runtime's answer (timeout, kill, exit)."""
        for invocation in (self._pending, self._taken):
            if invocation is not None and not invocation.reply.done():
                invocation.reply.set_result(Reply(ok=False, error=reason))
        self._pending = self._taken = None
        self._work.clear()

    # -- HTTP ------------------------------------------------------------------------
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        transport = request.transport
        if self.peer_allowed is not None and transport not in self._trusted:
            # Checked once per connection: the runtime clients keep theirs alive.
            peer = transport.get_extra_info("peername") if transport else None
            if not peer or not await self.peer_allowed((str(peer[0]), int(peer[1]))):
                log.warning("runtime API %s: refused a request from %s", self.address, peer)
                return forbidden()
            if transport is not None:
                self._trusted.add(transport)
        path = request.path
        if request.method == "GET" and path == f"{PREFIX}/invocation/next":
            return await self._next()
        if request.method == "POST":
            if path == f"{PREFIX}/init/error":
                return await self._init_error(request)
            if match := ROUTE.match(path):
                return await self._answer(request, match["id"], match["kind"])
        return _json(404, {"errorType": "NotFound", "errorMessage": f"no route {path}"})

    async def _next(self) -> web.StreamResponse:
        if not self.ready.done():
            self.ready.set_result(None)
        if self._taken is not None:
            taken, self._taken = self._taken, None
            if not taken.reply.done():
                taken.reply.set_result(
                    Reply(ok=False, error="the runtime asked for more work without answering")
                )
        while self._pending is None:
            self._work.clear()
            await self._work.wait()
        invocation, self._pending = self._pending, None
        self._taken = invocation
        body, content_type = event_of(invocation.payload)
        return web.Response(
            body=body,
            headers={
                "Content-Type": content_type,
                "Lambda-Runtime-Aws-Request-Id": invocation.id,
                "Lambda-Runtime-Deadline-Ms": str(invocation.deadline_ms),
                "Lambda-Runtime-Invoked-Function-Arn": self.function_arn,
                "Lambda-Runtime-Trace-Id": trace_id(invocation.traceparent),
            },
        )

    async def _answer(
        self, request: web.BaseRequest, invocation_id: str, kind: str
    ) -> web.StreamResponse:
        invocation = self._taken
        if invocation is None or invocation.id != invocation_id:
            return _json(
                400,
                {"errorType": "InvalidRequestID", "errorMessage": f"{invocation_id} is not open"},
            )
        if kind == "response":
            body = CappedBuffer(self.output_cap_bytes)
            while chunk := await request.content.read(CHUNK):
                body.write(chunk)
            reply = Reply(ok=True, body=body.getvalue(), truncated=body.truncated)
        else:
            raw = await _read_capped(request, MAX_ERROR_BODY)
            reply = Reply(ok=False, error=error_of(raw, request.headers.get(ERROR_TYPE_HEADER, "")))
        if self._taken is invocation:
            self._taken = None
            if not invocation.reply.done():
                invocation.reply.set_result(reply)
                # Let the reply reach the agent's stream before the runtime hears back:
                # else the 202 and the runtime's next `next` take the loop first, ~0.2 ms
                # of every warm call. A turn per hop: the wait on the reply, the job's
                # task, the stream's writer, and one to spare.
                for _ in range(RESULT_FIRST_TURNS):
                    await asyncio.sleep(0)
        return _json(202, {"status": "OK"})

    async def _init_error(self, request: web.BaseRequest) -> web.StreamResponse:
        raw = await _read_capped(request, MAX_ERROR_BODY)
        error = error_of(raw, request.headers.get(ERROR_TYPE_HEADER, ""))
        if not self.init_error.done():
            self.init_error.set_result(error)
        return _json(202, {"status": "OK"})


class Listener:
    """An HTTP/1.1 server (keep-alive, long polls) on a listening socket."""

    def __init__(
        self,
        sock: socket.socket,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
    ) -> None:
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.address = f"{host}:{port}"
        self._server = web.Server(
            handler, handler_cancellation=True, access_log=None, keepalive_timeout=3600
        )
        self._listener: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.sock.setblocking(False)
        self._listener = await asyncio.get_running_loop().create_server(
            self._server, sock=self.sock
        )

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        with contextlib.suppress(Exception):
            await self._server.shutdown(0.5)
        self.sock.close()


def forbidden() -> web.Response:
    return _json(403, {"errorType": "Forbidden", "errorMessage": "not yours"})


async def _read_capped(request: web.BaseRequest, cap: int) -> bytes:
    buffer = CappedBuffer(cap)
    while chunk := await request.content.read(CHUNK):
        buffer.write(chunk)
    return buffer.getvalue()


def _json(status: int, data: dict[str, str]) -> web.Response:
    return web.json_response(data, status=status)
