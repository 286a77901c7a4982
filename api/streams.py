"""Server-sent event streams, cheap: one reader of the domain-event stream per gateway fans
its entries out to any number of streaming clients (``/v1/events``, ``logs?follow``), so
an open stream holds no Redis connection of its own. Open streams are capped per caller
and in all; a client that cannot keep up is told so and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from hodei.errors import QueueFull, StreamLagging
from hodei.plugin.data import DataLayer
from hodei.plugin.data.connection import Outage, keep_running
from hodei.plugin.data.events import Entry, stream_position
from hodei.tasks import raise_if_cancelled

log = logging.getLogger(__name__)
KEEPALIVE_S = 15.0
READ_BLOCK_MS = 5_000
BACKLOG = 10_000  # entries a client may fall behind before it is closed


@dataclass(eq=False)
class Subscriber:
    caller: str
    invocation: str = ""
    worker: str = ""
    entries: asyncio.Queue[Entry | None] = field(default_factory=lambda: asyncio.Queue(BACKLOG))
    lagging: bool = False
    closed: bool = False  # the gateway is shutting down

    def wants(self, entry: Entry) -> bool:
        if self.invocation and entry.fields.get("invocation") != self.invocation:
            return False
        return not self.worker or entry.fields.get("worker") == self.worker

    def offer(self, entry: Entry) -> None:
        if not self.wants(entry):
            return
        try:
            self.entries.put_nowait(entry)
        except asyncio.QueueFull:
            self.lagging = True


class EventHub:
    def __init__(self, data: DataLayer, max_streams: int, max_per_caller: int) -> None:
        self.data = data
        self.max_streams = max_streams
        self.max_per_caller = max_per_caller
        self.subscribers: set[Subscriber] = set()
        self.per_caller: Counter[str] = Counter()
        self.position: str | None = None  # where the reader goes on; None while it rests
        self._wanted = asyncio.Event()  # someone subscribed
        self._starting = asyncio.Lock()

    async def subscribe(self, caller: str, invocation: str = "", worker: str = "") -> Subscriber:
        """A new listener, fed every entry from now on; QueueFull (429) beyond the caps on
        open streams."""
        if len(self.subscribers) >= self.max_streams:
            raise QueueFull(f"this gateway has {self.max_streams} open streams already")
        if self.per_caller[caller] >= self.max_per_caller:
            raise QueueFull(f"you have {self.max_per_caller} open streams already")
        subscriber = Subscriber(caller, invocation, worker)
        self.subscribers.add(subscriber)
        self.per_caller[caller] += 1
        try:
            if self.position is None:  # the reader rests: it starts again from here
                async with self._starting:  # once for a crowd subscribing at the same time
                    if self.position is None:
                        self.position = await self.data.events.last_event()
        except BaseException:
            self.unsubscribe(subscriber)
            raise
        self._wanted.set()
        return subscriber

    def close(self) -> None:
        """The gateway is shutting down: every stream ends now (it would otherwise hold the
        shutdown up for as long as its client stays)."""
        self.max_streams = 0
        for subscriber in self.subscribers:
            subscriber.closed = True
            with contextlib.suppress(asyncio.QueueFull):
                subscriber.entries.put_nowait(None)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self.subscribers:
            self.subscribers.discard(subscriber)
            self.per_caller[subscriber.caller] -= 1
            if self.per_caller[subscriber.caller] <= 0:
                del self.per_caller[subscriber.caller]

    async def run(self) -> None:
        await keep_running("event stream reader", self._read, log)

    async def _read(self, outage: Outage) -> None:
        while True:
            raise_if_cancelled()
            if not self.subscribers:
                # Nobody streams: read nothing (every invocation adds several events) until
                # someone subscribes, which sets where reading starts again.
                self.position = None
                self._wanted.clear()
                await self._wanted.wait()
                continue
            if self.position is None:
                self.position = await self.data.events.last_event()
            entries = await self.data.events.events(self.position, READ_BLOCK_MS)
            outage.recovered()
            for entry in entries:
                self.position = entry.id
                for subscriber in list(self.subscribers):
                    subscriber.offer(entry)


class EventStream:
    """One open server-sent event response."""

    def __init__(self, response: web.StreamResponse, subscriber: Subscriber) -> None:
        self.response = response
        self.subscriber = subscriber
        self.last = "0-0"

    @classmethod
    async def open(cls, request: web.Request, subscriber: Subscriber) -> EventStream:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        # aiohttp sends the headers with the first bytes: send some, so the client knows
        # at once that its stream is open.
        await response.write(b": open\n\n")
        return cls(response, subscriber)

    async def send(self, event: str, data: Any, event_id: str = "") -> None:
        head = f"id: {event_id}\n" if event_id else ""
        await self.response.write(f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode())

    async def send_entry(self, entry: Entry) -> None:
        await self.send(entry.type or "event", {**entry.fields, "id": entry.id}, entry.id)

    async def keepalive(self) -> None:
        await self.response.write(b": keepalive\n\n")

    @property
    def closed(self) -> bool:
        return self.subscriber.closed

    async def next(self) -> Entry | None:
        """The next entry not seen yet, or None after a quiet KEEPALIVE_S or when the
        stream is closed."""
        while True:
            if self.subscriber.lagging:
                raise StreamLagging(f"more than {BACKLOG} events behind")
            try:
                entry = await asyncio.wait_for(self.subscriber.entries.get(), KEEPALIVE_S)
            except TimeoutError:
                return None
            if entry is None or self.fresh(entry):
                return entry

    def fresh(self, entry: Entry) -> bool:
        """Whether ``entry`` comes after what was sent (a backlog read and the live feed may
        overlap); remembers it as sent."""
        if stream_position(entry.id) <= stream_position(self.last):
            return False
        self.last = entry.id
        return True
