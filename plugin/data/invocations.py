"""Invocation records: enqueue, read, cancel, replay, and the queries the API serves.

Reads fetch only the record's own fields (``records.INVOCATION_FIELDS``), never the
payload or the result by accident. Listings walk an index (every invocation, one
function's, one final status's, the running or the queued ones) newest first, with an
opaque cursor, and look at a bounded number of entries per call.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from hodei.domain import JOB_REVISION_PREFIX, Clock, now_ms
from hodei.errors import Conflict, IdempotencyMismatch, NotFound, QueueFull
from hodei.plugin.data import records
from hodei.plugin.data.keys import Keys
from hodei.plugin.data.messages import INBOX_TTL_S
from hodei.plugin.data.replies import maybe_raw, raw, raws, scored, text, texts
from hodei.plugin.data.scripts import Call, Scripts
from hodei.plugin.data.settings import DataSettings
from hodei.plugin.models import FINAL_STATUSES, Invocation, Priority, Status

SCAN_BUDGET = 2000  # index entries a filtered listing looks at per call


class Admission(enum.StrEnum):
    """enqueue.lua's and replay.lua's verdicts."""

    OK = "ok"
    DUPLICATE = "duplicate"
    IDEMPOTENCY_MISMATCH = "idempotency_mismatch"
    QUEUE_FULL = "queue_full"
    QUEUE_BYTES_FULL = "queue_bytes_full"
    CONCURRENCY = "concurrency"
    EXISTS = "exists"
    NO_FUNCTION = "no_function"
    NAME_TAKEN = "name_taken"
    UNKNOWN = "unknown"
    NOT_DEAD = "not_dead"
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class Enqueued:
    id: str
    duplicate: bool = False  # an earlier invocation with the same idempotency key


@dataclass(frozen=True, slots=True)
class Idempotency:
    scope: str  # whose key it is (the caller)
    key: str
    digest: str  # of the payload: the same key with another payload is refused


class CancelOutcome(enum.StrEnum):
    CANCELLED = "cancelled"  # it was queued: it never runs
    RUNNING = "running"  # its worker was told to kill it


@dataclass(frozen=True, slots=True)
class Page:
    invocations: list[Invocation]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class LogPage:
    lines: list[dict[str, Any]]
    next_offset: int
    truncated: bool


def job_name_taken(function: str) -> Conflict:
    return Conflict(f"{function} is registered: a one-off job needs a name of its own")


def _refused(verdict: Admission, subject: str) -> Exception:
    if verdict is Admission.QUEUE_FULL:
        return QueueFull("the queue is full", retry_after_s=5)
    if verdict is Admission.QUEUE_BYTES_FULL:
        return QueueFull("the queue's payload budget is used up", retry_after_s=5)
    if verdict is Admission.CONCURRENCY:
        return QueueFull(f"{subject} is at its concurrency limit")
    if verdict is Admission.EXISTS:
        return Conflict(f"invocation {subject} already exists")
    if verdict is Admission.NAME_TAKEN:
        return job_name_taken(subject)
    return NotFound(f"{subject} does not exist")


class Invocations:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        scripts: Scripts,
        settings: DataSettings,
        clock: Clock = now_ms,
    ) -> None:
        self.clock = clock
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.settings = settings

    # -- writes ----------------------------------------------------------------------------
    async def enqueue(
        self,
        function: str,
        payload: bytes,
        *,
        job_revision: str = "",
        priority: Priority | None = None,
        traceparent: str = "",
        callback_url: str = "",
        idempotency: Idempotency | None = None,
        invocation_id: str | None = None,
        awaited_by: str = "",
    ) -> Enqueued:
        """Record an invocation and put it in line, atomically and within the limits.
        ``job_revision``: a one-off job's (``Functions.store_revision``), refused under a
        registered function's name. ``awaited_by``: the gateway whose caller waits for it
        (its answer is published on that gateway's answer channel when it ends:
        ``records.answer`` reads it)."""
        invocation_id = invocation_id or uuid.uuid4().hex
        s = self.settings
        idem_key = (
            self.keys.idempotency(idempotency.scope, function, idempotency.key)
            if idempotency
            else self.keys.invocation(invocation_id)
        )
        reply = await self.scripts.run(
            Call(
                "enqueue",
                [self.keys.function(function), self.keys.invocation(invocation_id), idem_key],
                [
                    invocation_id,
                    function,
                    self.clock(),
                    payload,
                    str(priority) if priority else "",
                    traceparent,
                    job_revision,
                    s.idempotency_ttl_s if idempotency else 0,
                    idempotency.digest if idempotency else "",
                    s.max_queue,
                    s.max_queue_bytes,
                    int(s.ageing_s * 1000),
                    callback_url,
                    awaited_by,
                ],
            )
        )
        verdict, *rest = texts(reply)
        if verdict == Admission.OK:
            return Enqueued(rest[0])
        if verdict == Admission.DUPLICATE:
            return Enqueued(rest[0], duplicate=True)
        if verdict == Admission.IDEMPOTENCY_MISMATCH:
            raise IdempotencyMismatch("this Idempotency-Key was used with another payload", rest[0])
        subject = invocation_id if verdict == Admission.EXISTS else f"function {function!r}"
        raise _refused(Admission(verdict), subject)

    async def replay(self, invocation_id: str) -> str:
        """Run a dead letter again as a new invocation (same revision, payload, priority,
        callback), within the limits a new invoke meets."""
        new_id = uuid.uuid4().hex
        s = self.settings
        reply = await self.scripts.run(
            Call(
                "replay",
                [self.keys.invocation(invocation_id), self.keys.invocation(new_id)],
                [
                    invocation_id,
                    new_id,
                    self.clock(),
                    s.max_queue,
                    s.max_queue_bytes,
                    int(s.ageing_s * 1000),
                    JOB_REVISION_PREFIX,
                ],
            )
        )
        verdict = Admission(text(reply[0]))
        if verdict is Admission.OK:
            return text(reply[1])
        if verdict is Admission.NOT_DEAD:
            raise Conflict(f"invocation {invocation_id} is not in the dead-letter index")
        if verdict is Admission.GONE:
            raise Conflict(f"invocation {invocation_id} can no longer be replayed (expired)")
        if verdict is Admission.UNKNOWN:
            raise NotFound(f"invocation {invocation_id!r} does not exist")
        if verdict is Admission.NAME_TAKEN:
            raise Conflict(
                f"invocation {invocation_id} is a job whose name a function has taken since: "
                "a one-off job needs a name of its own"
            )
        if verdict is Admission.NO_FUNCTION:
            raise NotFound(
                f"invocation {invocation_id}'s function was deleted: its invocations are "
                "replayed only while it is registered"
            )
        raise _refused(verdict, f"invocation {invocation_id}'s function")

    async def cancel(
        self, invocation_id: str, reason: str = "cancelled through the API"
    ) -> CancelOutcome:
        """Cancel: a queued one ends here; a running one's worker is told to kill it."""
        reply = await self.scripts.run(
            Call(
                "cancel",
                [self.keys.invocation(invocation_id)],
                [invocation_id, self.clock(), reason, INBOX_TTL_S],
            )
        )
        kind = text(reply[0])
        if kind == "unknown":
            raise NotFound(f"invocation {invocation_id!r} does not exist")
        if kind == "final":
            raise Conflict(f"invocation {invocation_id} is already {text(reply[1])}")
        return CancelOutcome(kind)

    # -- reads ------------------------------------------------------------------------------
    async def get(self, invocation_id: str) -> Invocation:
        found = records.invocation(
            invocation_id,
            raws(
                await self.redis.hmget(
                    self.keys.invocation(invocation_id), records.INVOCATION_FIELDS
                )
            ),
        )
        if found is None:
            raise NotFound(f"invocation {invocation_id!r} does not exist")
        return found

    async def get_with_output(self, invocation_id: str) -> tuple[Invocation, bytes]:
        """The record and its output in one round trip (the output is empty until the
        invocation succeeded or failed with some)."""
        values = raws(
            await self.redis.hmget(
                self.keys.invocation(invocation_id), [*records.INVOCATION_FIELDS, "result"]
            )
        )
        found = records.invocation(invocation_id, values[:-1])
        if found is None:
            raise NotFound(f"invocation {invocation_id!r} does not exist")
        return found, values[-1] or b""

    async def result(self, invocation_id: str) -> tuple[Invocation, bytes]:
        found, output = await self.get_with_output(invocation_id)
        if not found.status.final:
            raise Conflict(f"invocation {invocation_id} is {found.status}, not finished")
        return found, output

    async def callback_url(self, invocation_id: str) -> str:
        url = await self.redis.hget(self.keys.invocation(invocation_id), "callback_url")
        return text(url) if url else ""

    async def logs(self, invocation_id: str, offset: int = 0, limit: int = 1000) -> LogPage:
        """Log lines from ``offset`` (the index in the kept lines), at most ``limit``."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.lrange(self.keys.logs(invocation_id), offset, offset + limit - 1)
        pipe.hget(self.keys.invocation(invocation_id), "log_truncated")
        lines, truncated = await pipe.execute()
        found = [raw(line) for line in lines]
        return LogPage(records.log_lines(found), offset + len(found), maybe_raw(truncated) == b"1")

    async def _fetch(self, ids: list[str]) -> list[Invocation | None]:
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hmget(self.keys.invocation(i), records.INVOCATION_FIELDS)
        return [
            records.invocation(i, raws(v)) for i, v in zip(ids, await pipe.execute(), strict=True)
        ]

    async def recent(
        self,
        *,
        function: str | None = None,
        status: Status | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Newest first; ``cursor`` continues where the previous page ended."""
        if status is Status.RUNNING and not function:
            return await self._running(limit, cursor)
        if function:
            index = self.keys.function_index(function)
        elif status is Status.QUEUED:
            index = self.keys.waiting  # by queue deadline, latest first
        elif status is not None:
            index = self.keys.status_index(status)
        else:
            index = self.keys.invocations
        wanted = status if (function and status) else None
        found: list[Invocation] = []
        top = f"({cursor}" if cursor else "+inf"
        looked = 0
        while looked < SCAN_BUDGET:
            page = scored(
                await self.redis.zrevrangebyscore(
                    index, top, "-inf", start=0, num=min(200, SCAN_BUDGET - looked), withscores=True
                )
            )
            if not page:
                return Page(found, None)
            looked += len(page)
            ids = [member for member, _ in page]
            for (_member, score), inv in zip(page, await self._fetch(ids), strict=True):
                top = f"({int(score)}"
                if inv is not None and (wanted is None or inv.status is wanted):
                    found.append(inv)
                    if len(found) == limit:
                        return Page(found, str(int(score)))
        return Page(found, top[1:])

    async def _running(self, limit: int, cursor: str | None) -> Page:
        """Running invocations are few (one per busy job slot): read them all, order them."""
        ids = texts(await self.redis.zrange(self.keys.leases, 0, -1))
        running = sorted(
            (inv for inv in await self._fetch(ids) if inv and inv.status is Status.RUNNING),
            key=lambda inv: inv.created_ms,
            reverse=True,
        )
        if cursor:
            running = [inv for inv in running if inv.created_ms < int(cursor)]
        page = running[:limit]
        more = len(running) > limit
        return Page(page, str(page[-1].created_ms) if more and page else None)

    async def dead_letters(self, limit: int = 100) -> list[Invocation]:
        ids = texts(await self.redis.zrevrange(self.keys.dead, 0, limit - 1))
        return [inv for inv in await self._fetch(ids) if inv is not None]

    async def trim(self, cutoff_ms: int) -> None:
        """Drop index entries older than the retention (their records expired already)."""
        by_creation = cutoff_ms * 1000  # the indexes score ms * 1000 + sequence
        functions = await self.redis.smembers(self.keys.indexed_functions)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(self.keys.invocations, "-inf", by_creation)
        for status in FINAL_STATUSES:
            pipe.zremrangebyscore(self.keys.status_index(status), "-inf", by_creation)
        for function in texts(functions):
            pipe.zremrangebyscore(self.keys.function_index(function), "-inf", by_creation)
        pipe.zremrangebyscore(self.keys.dead, "-inf", cutoff_ms)
        await pipe.execute()

    async def dead_count(self) -> int:
        return int(await self.redis.zcard(self.keys.dead))
