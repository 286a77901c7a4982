"""The Worker Repository: worker records in Redis and the seed's state machine."""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from hodei.plugin.keys import Keys
from hodei.plugin.placement import WorkerView
from hodei.plugin.scripts import RedisClient, Scripts
from hodei.plugin.store import now_ms


class WorkerState(enum.StrEnum):
    CREATING = "creating"
    REGISTERING = "registering"
    AVAILABLE = "available"
    RUNNING = "running"
    DRAINING = "draining"
    TERMINATED = "terminated"
    UNHEALTHY = "unhealthy"
    FAILED = "failed"


# The seed's transitions (server side). "Available" and "Running" differ only in whether
# jobs are running; Unhealthy -> Available is a reconnect through registration.
TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.CREATING: frozenset({WorkerState.REGISTERING}),
    WorkerState.REGISTERING: frozenset(
        {WorkerState.AVAILABLE, WorkerState.FAILED, WorkerState.UNHEALTHY}
    ),
    WorkerState.AVAILABLE: frozenset(
        {WorkerState.RUNNING, WorkerState.DRAINING, WorkerState.UNHEALTHY}
    ),
    WorkerState.RUNNING: frozenset(
        {WorkerState.AVAILABLE, WorkerState.DRAINING, WorkerState.UNHEALTHY}
    ),
    WorkerState.DRAINING: frozenset(
        {WorkerState.TERMINATED, WorkerState.RUNNING, WorkerState.UNHEALTHY}
    ),
    WorkerState.UNHEALTHY: frozenset({WorkerState.REGISTERING, WorkerState.FAILED}),
    WorkerState.TERMINATED: frozenset({WorkerState.REGISTERING}),
    WorkerState.FAILED: frozenset({WorkerState.REGISTERING}),
}
SCHEDULABLE = frozenset({WorkerState.AVAILABLE, WorkerState.RUNNING})


def sources_of(target: WorkerState) -> str:
    """The states from which ``target`` may be entered, as worker_state.lua expects them."""
    return ",".join(s.value for s, targets in TRANSITIONS.items() if target in targets)


@dataclass(frozen=True, slots=True)
class Registration:
    session_id: str
    orphans: list[str]
    revoked: list[str]


class Registry:
    def __init__(
        self, redis: RedisClient, keys: Keys, scripts: Scripts, events_maxlen: int
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.events_maxlen = events_maxlen

    async def register(
        self, worker_id: str, server_id: str, fields: dict[str, Any], running: list[str]
    ) -> Registration:
        session_id = uuid.uuid4().hex
        fields = {**fields, "id": worker_id, "server_id": server_id, "session_id": session_id}
        args: list[Any] = [worker_id, now_ms(), self.events_maxlen, len(fields)]
        for k, v in fields.items():
            args += [k, v]
        args += running
        orphans, revoked = await self.scripts.run(
            "register",
            [
                self.keys.worker(worker_id),
                self.keys.worker_jobs(worker_id),
                self.keys.workers,
                self.keys.heartbeats,
                self.keys.events,
            ],
            args,
        )
        return Registration(
            session_id, [o.decode() for o in orphans], [r.decode() for r in revoked]
        )

    async def transition(
        self, worker_id: str, target: WorkerState, session_id: str = ""
    ) -> WorkerState | None:
        """Move to ``target`` if the seed's state machine allows it; the previous state."""
        previous = await self.scripts.run(
            "worker_state",
            [self.keys.worker(worker_id), self.keys.events],
            [worker_id, target.value, sources_of(target), session_id, now_ms(), self.events_maxlen],
        )
        return WorkerState(previous.decode()) if previous else None

    async def get(self, worker_id: str) -> dict[str, str] | None:
        raw = await self.redis.hgetall(self.keys.worker(worker_id))
        return {k.decode(): v.decode() for k, v in raw.items()} if raw else None

    async def jobs_of(self, worker_id: str) -> list[str]:
        return sorted(
            j.decode() for j in await self.redis.smembers(self.keys.worker_jobs(worker_id))
        )

    async def all(self) -> list[dict[str, str]]:
        ids = sorted(i.decode() for i in await self.redis.smembers(self.keys.workers))
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self.keys.worker(i))
        found = []
        for raw in await pipe.execute():
            if raw:
                found.append({k.decode(): v.decode() for k, v in raw.items()})
        return found

    async def stale(self, older_than_ms: int) -> list[str]:
        """Workers whose last heartbeat is older than the given time."""
        ids = await self.redis.zrangebyscore(self.keys.heartbeats, "-inf", older_than_ms)
        return [i.decode() for i in ids]

    async def consul_changed(self, worker_ids: list[str], passing: Container[str]) -> None:
        """Record Consul's verdict on these workers as worker events."""
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in worker_ids:
            verdict = "passing" if worker_id in passing else "not_passing"
            pipe.xadd(
                self.keys.events,
                {"type": "worker", "worker": worker_id, "consul": verdict},
                maxlen=self.events_maxlen,
                approximate=True,
            )
        await pipe.execute()

    async def forget(self, worker_id: str) -> None:
        """Drop a Failed or Terminated worker with no jobs left from the fleet."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.srem(self.keys.workers, worker_id)
        pipe.zrem(self.keys.heartbeats, worker_id)
        pipe.delete(self.keys.worker(worker_id))
        await pipe.execute()


def view_of(h: dict[str, str], now: int, heartbeat_ms: int) -> WorkerView:
    """The scheduler's view of a worker record; health falls as heartbeats get late."""
    age = max(0, now - int(h.get("last_heartbeat") or now))
    health = 1.0 if age <= heartbeat_ms * 1.5 else max(0.5, 1.0 - age / (heartbeat_ms * 6))
    health -= min(0.3, 0.1 * int(h.get("unhealthy_count") or 0))
    return WorkerView(
        id=h["id"],
        cpu_total=int(h.get("cpu_total") or 0),
        mem_total=int(h.get("mem_total") or 0),
        gpu_total=int(h.get("gpu_total") or 0),
        slots_total=int(h.get("slots_total") or 0),
        cpu_used=int(h.get("cpu_used") or 0),
        mem_used=int(h.get("mem_used") or 0),
        gpu_used=int(h.get("gpu_used") or 0),
        slots_used=int(h.get("slots_used") or 0),
        labels=json.loads(h.get("labels") or "{}"),
        runtimes=frozenset(r for r in (h.get("runtimes") or "").split(",") if r),
        schedulable=h.get("state") in SCHEDULABLE,
        health=health,
        server_id=h.get("server_id", ""),
    )
