"""The Worker Repository: worker records and the seed's state machine."""

from __future__ import annotations

import uuid
from collections.abc import Container, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from hodei.domain import Clock, WorkerState, now_ms
from hodei.plugin.data import records
from hodei.plugin.data.events import WAKEUPS_MAXLEN
from hodei.plugin.data.keys import Keys
from hodei.plugin.data.records import Amounts, WorkerRecord
from hodei.plugin.data.replies import mapping, text, texts
from hodei.plugin.data.scripts import Call, Scripts

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
    orphans: list[str]  # leased to it, but it no longer has them
    revoked: list[str]  # it reports them, but they are not (or no longer) leased to it


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every worker, and the wake-up stream's position when they were read (changes after
    it are not in the records)."""

    workers: list[WorkerRecord]
    position: str


class Workers:
    def __init__(
        self, redis: Redis, keys: Keys, scripts: Scripts, events_maxlen: int, clock: Clock = now_ms
    ) -> None:
        self.clock = clock
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.events_maxlen = events_maxlen

    async def register(
        self,
        worker_id: str,
        server_id: str,
        *,
        hostname: str,
        version: str,
        capacity: Amounts,
        labels: dict[str, str],
        runtimes: Sequence[str],
        running: Sequence[str],
    ) -> Registration:
        session_id = uuid.uuid4().hex
        fields = records.registration_fields(
            worker_id,
            server_id,
            session_id,
            hostname=hostname,
            version=version,
            capacity=capacity,
            labels=labels,
            runtimes=runtimes,
        )
        args: list[str | int] = [worker_id, self.clock(), len(fields)]
        for k, v in fields.items():
            args += [k, v]
        args += list(running)
        orphans, revoked = await self.scripts.run(
            Call(
                "register",
                [
                    self.keys.worker(worker_id),
                    self.keys.worker_jobs(worker_id),
                    self.keys.workers,
                    self.keys.heartbeats,
                ],
                args,
            )
        )
        return Registration(session_id, texts(orphans), texts(revoked))

    async def transition(
        self, worker_id: str, target: WorkerState, session_id: str = ""
    ) -> WorkerState | None:
        """Move to ``target`` if the seed's state machine allows it; the previous state."""
        previous = await self.scripts.run(
            Call(
                "worker_state",
                [self.keys.worker(worker_id)],
                [worker_id, target.value, sources_of(target), session_id, self.clock()],
            )
        )
        return WorkerState(text(previous)) if previous else None

    async def get(self, worker_id: str) -> WorkerRecord | None:
        return records.worker(mapping(await self.redis.hgetall(self.keys.worker(worker_id))))

    async def jobs_of(self, worker_id: str) -> list[str]:
        """The invocations leased to a worker."""
        return sorted(texts(await self.redis.hkeys(self.keys.worker_jobs(worker_id))))

    async def all(self) -> list[WorkerRecord]:
        return (await self.snapshot()).workers

    async def snapshot(self, ids: Sequence[str] | None = None) -> Snapshot:
        """Every worker (or these), read in one transaction with the wake-up stream's
        position, so that a reader applying the changes after it counts each once."""
        if ids is None:
            ids = sorted(texts(await self.redis.smembers(self.keys.workers)))
        pipe = self.redis.pipeline(transaction=True)
        pipe.xrevrange(self.keys.wakeups, count=1)
        for i in ids:
            pipe.hgetall(self.keys.worker(i))
        last, *hashes = await pipe.execute()
        found = [w for w in (records.worker(mapping(h)) for h in hashes) if w is not None]
        return Snapshot(found, texts([last[0][0]])[0] if last else "0-0")

    async def silent_since(self, older_than_ms: int) -> list[str]:
        """Workers whose last heartbeat is older than the given time."""
        ids = await self.redis.zrangebyscore(self.keys.heartbeats, "-inf", older_than_ms)
        return texts(ids)

    async def consul_changed(self, worker_ids: Sequence[str], passing: Container[str]) -> None:
        """Record Consul's verdict on these workers as worker events (and wake-ups)."""
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in worker_ids:
            verdict = "passing" if worker_id in passing else "not_passing"
            pipe.xadd(
                self.keys.events,
                {"type": "worker", "worker": worker_id, "consul": verdict},
                maxlen=self.events_maxlen,
                approximate=True,
            )
            pipe.xadd(
                self.keys.wakeups,
                {"type": "worker", "worker": worker_id},
                maxlen=WAKEUPS_MAXLEN,
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
