"""Server-sent events over the domain-event stream (the seed's event bus)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from hodei.plugin.keys import Keys
from hodei.plugin.scripts import RedisClient

KEEPALIVE_MS = 15_000


class EventStream:
    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def open(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        return response

    async def send(
        self, response: web.StreamResponse, event: str, data: Any, event_id: str = ""
    ) -> None:
        head = f"id: {event_id}\n" if event_id else ""
        await response.write(f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode())

    async def follow(
        self, *, invocation: str = "", worker: str = "", since: str = "$"
    ) -> AsyncIterator[dict[str, str] | None]:
        """Matching events as they come, with None first and after every quiet period, so
        the caller can look at the current state (and keep the connection alive)."""
        last = since
        if last == "$":
            newest = await self.redis.xrevrange(self.keys.events, count=1)
            last = newest[0][0].decode() if newest else "0-0"
        yield None
        while True:
            reply = await self.redis.xread({self.keys.events: last}, count=500, block=KEEPALIVE_MS)
            if not reply:
                yield None
                continue
            for _stream, entries in reply:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    event = {k.decode(): v.decode() for k, v in fields.items()}
                    if invocation and event.get("invocation") != invocation:
                        continue
                    if worker and event.get("worker") != worker:
                        continue
                    event["id"] = last
                    yield event
