"""The queue as the scheduler and the operators see it: its head, its depth (counters the
scripts keep, so reading them costs the same with 10 or 100,000 queued), parked work,
retries coming due, and queue timeouts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from hodei.domain import Clock, now_ms
from hodei.plugin.data import records
from hodei.plugin.data.keys import Keys
from hodei.plugin.data.replies import mapping, raws, text, texts
from hodei.plugin.data.scripts import Call, Scripts
from hodei.plugin.models import Priority

UNPARK_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class Queued:
    """What the scheduler needs to know of a queued invocation (it never changes while
    the invocation waits)."""

    id: str
    function: str
    revision: str
    created_ms: int
    queued_ms: int
    pending_reason: str


@dataclass(frozen=True, slots=True)
class Depth:
    per_priority: dict[str, int]
    retrying: int
    payload_bytes: int

    @property
    def total(self) -> int:
        return sum(self.per_priority.values())


@dataclass(frozen=True, slots=True)
class Pending:
    id: str
    function: str
    priority: str
    pending_reason: str
    parked: bool


@dataclass(frozen=True, slots=True)
class Expired:
    id: str
    function: str
    revision: str


class Queue:
    def __init__(self, redis: Redis, keys: Keys, scripts: Scripts, clock: Clock = now_ms) -> None:
        self.clock = clock
        self.redis = redis
        self.keys = keys
        self.scripts = scripts

    async def head(self, start: int, count: int) -> list[str]:
        """Ids on the ready queue, in order, from position ``start``."""
        return texts(await self.redis.zrange(self.keys.queue, start, start + count - 1))

    async def describe(self, ids: Sequence[str]) -> list[Queued | None]:
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hmget(
                self.keys.invocation(i),
                ["status", "function", "revision", "order", "queued_at", "pending_reason"],
            )
        found: list[Queued | None] = []
        for i, values in zip(ids, await pipe.execute(), strict=True):
            status, fn, rev, order, queued, reason = raws(values)
            if status != b"queued" or fn is None or rev is None or order is None:
                found.append(None)
                continue
            created = int(order) // 1000
            found.append(
                Queued(
                    i,
                    fn.decode(),
                    rev.decode(),
                    created,
                    int(queued or created),
                    (reason or b"").decode(),
                )
            )
        return found

    async def note_pending(self, reasons: dict[str, str]) -> None:
        """Record why these queued invocations wait (what /v1/queue shows)."""
        if reasons:
            args = [x for pair in reasons.items() for x in pair]
            await self.scripts.run(Call("pending", (), args))

    async def park(self, reasons: dict[str, str]) -> int:
        """Park queued invocations no worker of the fleet can take; the number parked."""
        if not reasons:
            return 0
        args: list[str] = [x for pair in reasons.items() for x in pair]
        return int(await self.scripts.run(Call("park", (), args)))

    async def parked_revisions(self) -> list[tuple[str, str]]:
        """(function, revision) of every revision with parked invocations."""
        found = []
        for member in texts(await self.redis.smembers(self.keys.parked_revisions)):
            function, _, revision = member.rpartition(":")
            found.append((function, revision))
        return sorted(found)

    async def unpark(self, function: str, revision: str) -> int:
        """Back to the ready queue, all of them; the number moved."""
        moved = 0
        while True:
            n = int(await self.scripts.run(Call("unpark", (), [function, revision, UNPARK_CHUNK])))
            moved += n
            if n < UNPARK_CHUNK:
                return moved

    async def promote_due(self, limit: int = 1000) -> int:
        """Retries whose backoff has elapsed go back to the ready queue."""
        return int(await self.scripts.run(Call("promote", (), [self.clock(), limit])))

    async def next_due_ms(self) -> int | None:
        first = await self.redis.zrange(self.keys.delayed, 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    async def expire_due(self, limit: int = 500) -> list[Expired]:
        """Fail the queued invocations past their queue deadline (the one place)."""
        flat = await self.scripts.run(Call("expire_due", (), [self.clock(), limit]))
        found = texts(flat)
        return [Expired(*found[i : i + 3]) for i in range(0, len(found), 3)]

    async def depth(self) -> Depth:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(self.keys.depth)
        pipe.zcard(self.keys.delayed)
        counts, retrying = await pipe.execute()
        c = {text(k): int(v) for k, v in mapping(counts).items()}
        per_priority = {p.value: c.get(p.value, 0) for p in Priority}
        return Depth(per_priority, int(retrying), c.get("bytes", 0))

    async def pending(self, limit: int = 100) -> tuple[list[Pending], int | None]:
        """The head of the queue and the parked invocations with why they wait, and when
        the oldest of them was created (ms)."""
        ids = await self.head(0, limit)
        for function, revision in await self.parked_revisions():
            if len(ids) >= 2 * limit:
                break
            key = self.keys.parked(function, revision)
            ids += texts(await self.redis.zrange(key, 0, limit - 1))
        pipe = self.redis.pipeline(transaction=False)
        fields = ["function", "priority", "order", "pending_reason", "parked"]
        for i in ids:
            pipe.hmget(self.keys.invocation(i), fields)
        pending: list[Pending] = []
        oldest: int | None = None
        for i, values in zip(ids, await pipe.execute(), strict=True):
            fn, prio, order, reason, parked = raws(values)
            if order:
                created = int(order) // 1000
                oldest = created if oldest is None else min(oldest, created)
            if reason:
                pending.append(
                    Pending(
                        i,
                        text(fn or b""),
                        records.priority(prio).value,
                        text(reason),
                        parked == b"1",
                    )
                )
        return pending, oldest
