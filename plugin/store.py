"""Functions and invocation records in Redis: the seed's Job Repository."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from hodei.errors import Conflict, NotFound, QueueFull
from hodei.plugin.keys import Keys
from hodei.plugin.models import FunctionSpec, Invocation, Priority, Status
from hodei.plugin.scripts import RedisClient, Scripts

PRIORITY_OFFSET = {Priority.HIGH: -1, Priority.NORMAL: 0, Priority.LOW: 1}
LOG_LINES_KEPT = 10_000
IDEMPOTENCY_TTL_S = 24 * 3600


def now_ms() -> int:
    return int(time.time() * 1000)


def queue_score(priority: Priority, created_ms: int, ageing_s: float) -> int:
    """Position in the single ready queue: FIFO within a priority, with ageing.

    A priority level is worth ``ageing_s`` of waiting: a low invocation queued ``2*ageing_s``
    before a high one goes first, so no level starves while the higher ones keep coming.
    """
    return created_ms + PRIORITY_OFFSET[priority] * int(ageing_s * 1000)


@dataclass(frozen=True, slots=True)
class CancelResult:
    status: str
    worker_id: str = ""
    attempt: int = 0


class Store:
    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        scripts: Scripts,
        *,
        ageing_s: float = 60.0,
        max_queue: int = 0,
        events_maxlen: int = 100_000,
        retention_s: int = 0,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.ageing_s = ageing_s
        self.max_queue = max_queue
        self.retention_s = retention_s
        self.events_maxlen = events_maxlen

    # -- functions ---------------------------------------------------------------------
    async def put_function(self, spec: FunctionSpec) -> bool:
        """Store a function; True when it was created, False when replaced."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.keys.function(spec.name), json.dumps(spec.to_dict()))
        pipe.sadd(self.keys.functions, spec.name)
        _, added = await pipe.execute()
        return bool(added)

    async def get_function(self, name: str) -> FunctionSpec:
        raw = await self.redis.get(self.keys.function(name))
        if raw is None:
            raise NotFound(f"function {name!r} does not exist")
        data = json.loads(raw)
        data.pop("name", None)
        return FunctionSpec.from_dict(name, data)

    async def list_functions(self) -> list[FunctionSpec]:
        names = sorted(n.decode() for n in await self.redis.smembers(self.keys.functions))
        return [await self.get_function(n) for n in names]

    async def delete_function(self, name: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.keys.function(name))
        pipe.srem(self.keys.functions, name)
        deleted, _ = await pipe.execute()
        if not deleted:
            raise NotFound(f"function {name!r} does not exist")

    # -- invocations ---------------------------------------------------------------------
    async def invoke(
        self,
        spec: FunctionSpec,
        payload: bytes,
        *,
        priority: Priority | None = None,
        traceparent: str = "",
        invocation_id: str | None = None,
        callback_url: str = "",
        idempotency_key: str = "",
    ) -> str:
        """Record an invocation and enqueue it atomically; returns its id (the earlier
        invocation's id when the idempotency key was seen within the last day)."""
        invocation_id = invocation_id or uuid.uuid4().hex
        prio = priority or spec.priority
        created = now_ms()
        record: dict[str, Any] = {
            "id": invocation_id,
            "function": spec.name,
            "status": Status.QUEUED.value,
            "attempt": 1,
            "failures": 0,
            "max_retries": spec.max_retries,
            "priority": prio.value,
            "created_at": created,
            "queue_deadline": created + int(spec.queue_timeout_s * 1000),
            "runtime": spec.runtime,
            "image": spec.image,
            "command": json.dumps(list(spec.command)),
            "env": json.dumps(spec.env),
            "labels": json.dumps(spec.labels),
            "network": int(spec.network),
            "timeout_s": spec.timeout_s,
            "cpu": spec.resources.cpu_millicores,
            "mem": spec.resources.memory_mb,
            "gpu": spec.resources.gpus,
            "traceparent": traceparent,
            "callback_url": callback_url,
            "payload": payload,
        }
        args: list[Any] = [
            invocation_id,
            queue_score(prio, created, self.ageing_s),
            self.max_queue,
            created,
            self.events_maxlen,
            spec.name,
            spec.concurrency,
            IDEMPOTENCY_TTL_S if idempotency_key else 0,
        ]
        for key, value in record.items():
            args += [key, value]
        reply = await self.scripts.run(
            "enqueue",
            [
                self.keys.invocation(invocation_id),
                self.keys.queue,
                self.keys.invocations,
                self.keys.events,
                self.keys.sequence,
                self.keys.inflight,
                self.keys.idempotency(f"{spec.name}:{idempotency_key}"),
            ],
            args,
        )
        code = int(reply[0])
        if code == 0:
            raise QueueFull(f"the queue holds {self.max_queue} invocations already")
        if code == -1:
            raise Conflict(f"invocation {invocation_id} already exists")
        if code == -2:
            raise QueueFull(
                f"function {spec.name} has {spec.concurrency} invocations in flight already"
            )
        return str(reply[1].decode())

    async def get(self, invocation_id: str) -> Invocation:
        inv = Invocation.from_fields(
            await self.redis.hmget(self.keys.invocation(invocation_id), *Invocation.FIELDS)
        )
        if inv is None:
            raise NotFound(f"invocation {invocation_id!r} does not exist")
        return inv

    async def result(self, invocation_id: str) -> tuple[Invocation, bytes]:
        inv = await self.get(invocation_id)
        if not inv.status.final:
            raise Conflict(f"invocation {invocation_id} is {inv.status}, not finished")
        return inv, await self.output(invocation_id)

    async def output(self, invocation_id: str) -> bytes:
        """The stdout an invocation recorded (empty until it finished)."""
        out = await self.redis.hget(self.keys.invocation(invocation_id), "result")
        return bytes(out or b"")

    async def append_logs(
        self, invocation_id: str, attempt: int, worker_id: str, lines: list[dict[str, Any]]
    ) -> bool:
        """Append an attempt's log lines, if that worker holds that attempt."""
        if not lines:
            return True
        appended = await self.scripts.run(
            "append_logs",
            [self.keys.invocation(invocation_id), self.keys.logs(invocation_id), self.keys.events],
            [
                attempt,
                worker_id,
                LOG_LINES_KEPT,
                self.events_maxlen,
                *(json.dumps({**line, "attempt": attempt}) for line in lines),
            ],
        )
        return bool(appended)

    async def logs(self, invocation_id: str, start: int = 0) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(self.keys.logs(invocation_id), start, -1)
        return [json.loads(r) for r in raw]

    async def cancel(self, invocation_id: str) -> CancelResult:
        """Cancel; a queued one ends here, a running one is flagged (the caller kills it)."""
        reply = await self.scripts.run(
            "cancel",
            [
                self.keys.invocation(invocation_id),
                self.keys.queue,
                self.keys.delayed,
                self.keys.events,
                self.keys.inflight,
                self.keys.callbacks,
                self.keys.parked,
                self.keys.logs(invocation_id),
            ],
            [
                invocation_id,
                now_ms(),
                self.events_maxlen,
                self.keys.completed_channel,
                self.retention_s,
            ],
        )
        code = int(reply[0])
        if code == -1:
            raise NotFound(f"invocation {invocation_id!r} does not exist")
        if code == 0:
            raise Conflict(f"invocation {invocation_id} is already {reply[1].decode()}")
        if code == 2:
            return CancelResult("running", reply[1].decode(), int(reply[2]))
        return CancelResult("cancelled")

    async def list_invocations(
        self,
        *,
        function: str | None = None,
        status: str | None = None,
        limit: int = 50,
    ) -> list[Invocation]:
        """Newest first, filtered; scans the index in pages until ``limit`` match."""
        found: list[Invocation] = []
        start = 0
        page = max(limit, 100)
        while len(found) < limit:
            ids = await self.redis.zrevrange(self.keys.invocations, start, start + page - 1)
            if not ids:
                break
            start += page
            pipe = self.redis.pipeline(transaction=False)
            for i in ids:
                pipe.hmget(self.keys.invocation(i.decode()), *Invocation.FIELDS)
            for values in await pipe.execute():
                inv = Invocation.from_fields(values)
                if inv is None:  # expired with the retention
                    continue
                if (function and inv.function != function) or (status and inv.status != status):
                    continue
                found.append(inv)
                if len(found) >= limit:
                    break
        return found

    async def dead_letters(self, limit: int = 100) -> list[str]:
        return [i.decode() for i in await self.redis.zrevrange(self.keys.dead, 0, limit - 1)]

    async def replay(self, invocation_id: str) -> str:
        """Run a dead-lettered invocation again, as a new invocation with the same input."""
        key = self.keys.invocation(invocation_id)
        if not await self.redis.exists(key):
            raise NotFound(f"invocation {invocation_id!r} does not exist")
        if not await self.redis.zscore(self.keys.dead, invocation_id):
            raise Conflict(f"invocation {invocation_id} is not in the dead-letter index")
        h = await self.redis.hgetall(key)
        spec = FunctionSpec.from_dict(h[b"function"].decode(), _spec_fields(h))
        new_id = await self.invoke(
            spec,
            h.get(b"payload", b""),
            priority=Priority(h[b"priority"].decode()),
            traceparent=h.get(b"traceparent", b"").decode(),
        )
        await self.redis.zrem(self.keys.dead, invocation_id)
        return new_id

    async def queue_depth(self) -> dict[str, int]:
        """Queued invocations per priority (ready or parked), and those waiting for a retry
        backoff."""
        depth = {p.value: 0 for p in Priority}
        # Both sets read in one transaction: an invocation moving between them is counted once.
        snapshot = self.redis.pipeline(transaction=True)
        snapshot.zrange(self.keys.queue, 0, -1)
        snapshot.zrange(self.keys.parked, 0, -1)
        ids = [i for part in await snapshot.execute() for i in part]
        if ids:
            pipe = self.redis.pipeline(transaction=False)
            for i in ids:
                pipe.hget(self.keys.invocation(i.decode()), "priority")
            for prio in await pipe.execute():
                if prio:
                    depth[prio.decode()] += 1
        depth["retrying"] = await self.redis.zcard(self.keys.delayed)
        return depth


def _spec_fields(h: dict[bytes, bytes]) -> dict[str, Any]:
    """The function-spec fields snapshotted in an invocation record."""
    return {
        "runtime": h[b"runtime"].decode(),
        "image": h[b"image"].decode(),
        "command": json.loads(h[b"command"]),
        "env": json.loads(h[b"env"]),
        "labels": json.loads(h[b"labels"]),
        "network": h[b"network"] == b"1",
        "timeout_s": float(h[b"timeout_s"]),
        "max_retries": int(h[b"max_retries"]),
        "resources": {
            "cpu_millicores": int(h[b"cpu"]),
            "memory_mb": int(h[b"mem"]),
            "gpus": int(h[b"gpu"]),
        },
    }
