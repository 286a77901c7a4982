"""The leader's scheduler: woken by the event stream, places queued work by bin-packing.

There is no polling interval. The scheduler blocks on the domain-event stream, which every
enqueue, completion and worker change writes to, so it wakes on exactly the things that
can make a placement possible; a timeout only serves due retries and queue timeouts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from hodei import tracing
from hodei.logs import inv
from hodei.plugin import metrics
from hodei.plugin.keys import Keys
from hodei.plugin.leader import LeaderLock
from hodei.plugin.leasing import Leases
from hodei.plugin.placement import Demand, Fleet, Pending, WorkerView
from hodei.plugin.registry import Registry, view_of
from hodei.plugin.scripts import RedisClient
from hodei.plugin.settings import ServerSettings
from hodei.plugin.store import now_ms
from hodei.proto import hodei_pb2 as pb

log = logging.getLogger(__name__)

Deliver = Callable[[str, str, pb.AssignJobRequest], Awaitable[None]]
FULL_REFRESH_S = 30.0
UNPARK_CHUNK = 1000


@dataclass(slots=True)
class Queued:
    demand: Demand
    deadline_ms: int
    created_ms: int
    queued_ms: int
    function: str
    pending_reason: str
    published_reason: str
    structural: bool = False
    decided_ns: int = 0  # when the scheduler took it up (the schedule span starts)


class Scheduler:
    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        settings: ServerSettings,
        leases: Leases,
        registry: Registry,
        leader: LeaderLock,
        deliver: Deliver,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.leases = leases
        self.registry = registry
        self.leader = leader
        self.deliver = deliver
        self.scripts = leases.scripts
        self.fleet = Fleet(settings.max_candidates, settings.max_scan)
        self._queued: dict[str, Queued] = {}
        self._last_event = "0-0"
        self._next_due: int | None = None
        self._refreshed_at = 0.0
        # Consul's verdict when Consul is configured: work goes only to passing workers.
        self.gate: Callable[[str], bool] | None = None

    async def run(self) -> None:
        while True:
            self.leader.changed.clear()
            if self.leader.is_leader:
                metrics.IS_LEADER.set(1)
                try:
                    await self._lead(self.leader.token or "")
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("scheduler pass failed; starting over")
                    await asyncio.sleep(0.5)
                    continue
            metrics.IS_LEADER.set(0)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # A library below swallowed our cancellation; honour it anyway.
                raise asyncio.CancelledError
            await self.leader.changed.wait()

    async def _lead(self, token: str) -> None:
        log.info("scheduling as leader %s", token)
        await self._load()
        while self.leader.token == token:
            placed_all = await self.schedule_pass(token)
            if self.leader.token != token:
                break
            await self._wait_for_events(0 if not placed_all else self._timeout_ms())

    async def _load(self) -> None:
        """A fresh snapshot of the fleet, taken after noting the event stream's position so
        no change between the two is missed."""
        last = await self.redis.xrevrange(self.keys.events, count=1)
        self._last_event = last[0][0].decode() if last else "0-0"
        self.fleet = Fleet(self.settings.max_candidates, self.settings.max_scan)
        now = now_ms()
        hb_ms = int(self.settings.heartbeat_interval_s * 1000)
        for h in await self.registry.all():
            self.fleet.upsert(self._view(h, now, hb_ms))
        self._queued.clear()
        self._next_due = await self.leases.next_due_ms()
        self._refreshed_at = time.monotonic()
        await self.unpark()

    def _view(self, h: dict[str, str], now: int, hb_ms: int) -> WorkerView:
        view = view_of(h, now, hb_ms)
        if self.gate is not None and view.schedulable and not self.gate(view.id):
            view = replace(view, schedulable=False)
        return view

    def _timeout_ms(self) -> int:
        wait = 1000
        if self._next_due is not None:
            wait = min(wait, max(1, self._next_due - now_ms()))
        return wait

    async def _wait_for_events(self, block_ms: int) -> None:
        reply = await self.redis.xread(
            {self.keys.events: self._last_event}, count=1000, block=block_ms or None
        )
        dirty: set[str] = set()
        fleet_changed = False
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self._last_event = entry_id.decode()
                worker = fields.get(b"worker")
                kind = fields.get(b"type")
                if worker and kind != b"assigned":
                    dirty.add(worker.decode())
                if kind == b"retry":
                    self._next_due = None
                if kind == b"worker":
                    fleet_changed = True
        if time.monotonic() - self._refreshed_at > FULL_REFRESH_S:
            await self._load()
        elif dirty:
            await self._refresh(dirty)
        if self._next_due is None:
            self._next_due = await self.leases.next_due_ms()
        if fleet_changed:
            await self.unpark()

    async def unpark(self) -> None:
        """Give every parked invocation another look (the fleet changed)."""
        while (
            await self.scripts.run("unpark", [self.keys.parked, self.keys.queue], [UNPARK_CHUNK])
            == UNPARK_CHUNK
        ):
            pass

    async def _refresh(self, worker_ids: set[str]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        ordered = sorted(worker_ids)
        for w in ordered:
            pipe.hgetall(self.keys.worker(w))
        now = now_ms()
        hb_ms = int(self.settings.heartbeat_interval_s * 1000)
        for worker_id, raw in zip(ordered, await pipe.execute(), strict=True):
            if raw:
                self.fleet.upsert(
                    self._view({k.decode(): v.decode() for k, v in raw.items()}, now, hb_ms)
                )
            else:
                self.fleet.remove(worker_id)

    async def schedule_pass(self, token: str) -> bool:
        """Place what can be placed now. True when the queue head was worked through."""
        if self._next_due is not None and self._next_due <= now_ms():
            await self.leases.promote_due()
            self._next_due = await self.leases.next_due_ms()
        batch = self.settings.scheduler_batch
        page = 0
        # Unplaceable invocations (too big, waiting for a label) never hide placeable ones
        # behind them: the scan goes on until the queue ends or no worker has room left.
        while True:
            ids = [
                i.decode()
                for i in await self.redis.zrange(
                    self.keys.queue, page * batch, (page + 1) * batch - 1
                )
            ]
            if not ids:
                return True
            await self._describe(ids)
            plan = self._plan(ids)
            await self._commit(plan, token)
            await self._note_pending(ids)
            if len(ids) < batch or self.leader.token != token or not self.fleet.has_room:
                return True
            if plan:
                # The head moved; the next pass starts from the top again.
                return False
            page += 1

    async def _describe(self, ids: list[str]) -> None:
        """Cache what the scheduler needs of each queued invocation (immutable fields)."""
        unknown = [i for i in ids if i not in self._queued]
        if not unknown:
            return
        fields = (
            "cpu",
            "mem",
            "gpu",
            "runtime",
            "labels",
            "queue_deadline",
            "created_at",
            "function",
            "pending_reason",
            "queued_at",
        )
        pipe = self.redis.pipeline(transaction=False)
        for i in unknown:
            pipe.hmget(self.keys.invocation(i), *fields)
        for i, raw in zip(unknown, await pipe.execute(), strict=True):
            if raw[0] is None:
                continue
            labels = json.loads(raw[4] or b"{}")
            self._queued[i] = Queued(
                demand=Demand(
                    int(raw[0]),
                    int(raw[1]),
                    int(raw[2]),
                    raw[3].decode(),
                    tuple(sorted(labels.items())),
                ),
                deadline_ms=int(raw[5]),
                created_ms=int(raw[6]),
                queued_ms=int(raw[9] or raw[6]),
                function=raw[7].decode(),
                pending_reason=(raw[8] or b"").decode(),
                published_reason=(raw[8] or b"").decode(),
            )

    def _plan(self, ids: list[str]) -> list[tuple[str, str, Queued]]:
        plan: list[tuple[str, str, Queued]] = []
        for i in ids:
            q = self._queued.get(i)
            if q is None:
                continue
            q.decided_ns = time.time_ns()
            started = time.perf_counter()
            choice = self.fleet.place(q.demand)
            metrics.DECISION_SECONDS.observe(time.perf_counter() - started)
            if isinstance(choice, Pending):
                q.pending_reason = choice.reason
                q.structural = choice.structural
                continue
            self.fleet.reserve(choice.id, q.demand)
            plan.append((i, choice.id, q))
        return plan

    async def _commit(self, plan: list[tuple[str, str, Queued]], token: str) -> None:
        if not plan:
            return
        pipe = self.redis.pipeline(transaction=False)
        for invocation_id, worker_id, _ in plan:
            await self.leases.assign_call(invocation_id, worker_id, token, client=pipe)
        replies = await pipe.execute(raise_on_error=False)
        now = now_ms()
        for (invocation_id, worker_id, q), reply in zip(plan, replies, strict=True):
            code = int(reply[0]) if isinstance(reply, list) else 0
            if code == 1:
                self._queued.pop(invocation_id, None)
                metrics.PLACEMENTS.inc()
                if int(reply[1]) == 1:
                    metrics.SCHEDULING_LATENCY.observe(max(0, now - q.created_ms) / 1000)
                metrics.QUEUE_WAIT.observe(max(0, now - q.queued_ms) / 1000)
                request = self.leases.assignment(invocation_id, reply)
                if tracing.active():
                    self._trace(request, worker_id, q)
                server_id = self.fleet.workers[worker_id].server_id
                log.info(
                    "invocation %s attempt %d leased to %s",
                    invocation_id,
                    request.attempt,
                    worker_id,
                    extra=inv(invocation_id, request.attempt, worker_id=worker_id),
                )
                await self.deliver(worker_id, server_id, request)
                continue
            self.fleet.release(worker_id, q.demand)
            if code == -1:
                log.warning("fenced off: leadership %s is over", token)
                self.leader.token = None
                self.leader.changed.set()
                return
            if code == -2:
                self._queued.pop(invocation_id, None)
            else:
                await self._refresh({worker_id})

    @staticmethod
    def _trace(request: pb.AssignJobRequest, worker_id: str, q: Queued) -> None:
        attributes = {
            "hodei.invocation_id": request.invocation_id,
            "hodei.function": request.function,
            "hodei.attempt": request.attempt,
            "hodei.worker_id": worker_id,
        }
        tracing.span(
            "queue wait", request.traceparent, q.queued_ms * 1_000_000, q.decided_ns, attributes
        )
        tracing.span("schedule", request.traceparent, q.decided_ns, time.time_ns(), attributes)

    async def _note_pending(self, ids: list[str]) -> None:
        """Publish pending reasons that changed, and fail those past their queue timeout."""
        now = now_ms()
        pipe = self.redis.pipeline(transaction=False)
        expired: list[str] = []
        for i in ids:
            q = self._queued.get(i)
            if q is None:
                continue
            if q.deadline_ms <= now:
                expired.append(i)
                continue
            if q.structural:
                # Out of the ready queue until the fleet changes: passes stay cheap however
                # many such invocations pile up.
                await self.scripts.run(
                    "park",
                    [self.keys.invocation(i), self.keys.queue, self.keys.parked],
                    [i, q.pending_reason],
                    client=pipe,
                )
                del self._queued[i]
            elif q.pending_reason != q.published_reason:
                pipe.hset(self.keys.invocation(i), "pending_reason", q.pending_reason)
                q.published_reason = q.pending_reason
        if len(pipe):
            await pipe.execute()
        for i in expired:
            q = self._queued.pop(i)
            if await self.leases.expire_queued(i):
                metrics.INVOCATIONS.labels(q.function, "failed").inc()
                log.info(
                    "invocation %s failed after its queue timeout: %s",
                    i,
                    q.pending_reason,
                    extra=inv(i),
                )
