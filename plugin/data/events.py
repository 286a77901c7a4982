"""The two streams: the domain events (the seed's event bus, what ``/v1/events`` shows and
log followers wake on) and the scheduler's wake-ups (work queued, capacity freed, a
worker changed: only what may let something be placed; log lines never wake it)."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from hodei.plugin.data.keys import Keys
from hodei.plugin.data.replies import mapping, text

WAKEUPS_MAXLEN = 10_000


def stream_position(entry_id: str) -> tuple[int, int]:
    """A stream entry id as something that compares in stream order."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    fields: dict[str, str]

    @property
    def type(self) -> str:
        return self.fields.get("type", "")


def _entries(reply: object) -> list[Entry]:
    """From an XREAD reply (a list of [stream, entries])."""
    if not reply:
        return []
    assert isinstance(reply, list)
    return [
        Entry(text(entry_id), {text(k): text(v) for k, v in mapping(fields).items()})
        for _stream, entries in reply
        for entry_id, fields in entries
    ]


class Events:
    def __init__(self, redis: Redis, blocking: Redis, keys: Keys) -> None:
        self.redis = redis
        self.blocking = blocking
        self.keys = keys

    async def last(self, stream: str) -> str:
        newest = await self.redis.xrevrange(stream, count=1)
        return text(newest[0][0]) if newest else "0-0"

    async def last_event(self) -> str:
        return await self.last(self.keys.events)

    async def read(
        self, stream: str, after: str, block_ms: int | None, count: int = 1000
    ) -> list[Entry]:
        """Entries after ``after``, waiting up to ``block_ms`` for one (None: not at all)."""
        if block_ms is None:
            reply = await self.redis.xread({stream: after}, count=count)
        else:
            reply = await self.blocking.xread({stream: after}, count=count, block=max(1, block_ms))
        return _entries(reply)

    async def events(self, after: str, block_ms: int | None, count: int = 1000) -> list[Entry]:
        return await self.read(self.keys.events, after, block_ms, count)

    async def wakeups(self, after: str, block_ms: int | None, count: int = 1000) -> list[Entry]:
        return await self.read(self.keys.wakeups, after, block_ms, count)
