"""An invocation's logs: a page of them, or followed as they come (Server-Sent Events)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from hodei.api.requests import CALLER, flag, integer, valid_id
from hodei.api.state import gateway
from hodei.api.streams import EventStream
from hodei.errors import StreamLagging

log = logging.getLogger(__name__)
LOG_PAGE_MAX = 5000


async def get_logs(request: web.Request) -> web.StreamResponse:
    """GET /v1/invocations/{id}/logs[?offset=&limit=][&follow=true]"""
    gw = gateway(request)
    invocation_id = valid_id(request)
    offset = integer(request, "offset", 0, 0, 10**9)
    found = await gw.data.invocations.get(invocation_id)
    if not flag(request, "follow"):
        limit = integer(request, "limit", 1000, 1, LOG_PAGE_MAX)
        page = await gw.data.invocations.logs(invocation_id, offset, limit)
        return web.json_response(
            {
                "id": found.id,
                "lines": page.lines,
                "next_offset": page.next_offset,
                "truncated": page.truncated,
            }
        )
    subscriber = await gw.hub.subscribe(request[CALLER], invocation=invocation_id)
    stream: EventStream | None = None
    try:
        stream = await EventStream.open(request, subscriber)
        sent = offset
        while True:
            page = await gw.data.invocations.logs(invocation_id, sent, LOG_PAGE_MAX)
            for line in page.lines:
                await stream.send("log", line)
            sent = page.next_offset
            if len(page.lines) == LOG_PAGE_MAX:
                continue
            found = await gw.data.invocations.get(invocation_id)
            if found.status.final:
                await stream.send("end", {"id": found.id, "status": str(found.status)})
                return stream.response
            if stream.closed:
                return stream.response
            await stream.next()  # a log line, the end, or a quiet while: look again
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception as exc:
        if stream is None:
            raise
        await _stream_error(stream, exc)
        return stream.response
    finally:
        gw.hub.unsubscribe(subscriber)


async def _stream_error(stream: EventStream, exc: Exception) -> None:
    """The one thing written after a stream started, other than its data."""
    code = "too_slow" if isinstance(exc, StreamLagging) else "unavailable"
    if code == "unavailable":
        log.warning("event stream ended: %s", exc)
    with contextlib.suppress(ConnectionResetError):
        await stream.send("error", {"code": code, "message": str(exc) or type(exc).__name__})
