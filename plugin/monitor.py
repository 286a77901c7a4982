"""The seed's Health Monitor, run by the leader: heartbeat timeouts, lease reaping, queue
timeouts, index trimming; and, on every server, the gauges."""

from __future__ import annotations

import asyncio
import logging

from hodei.domain import WorkerState, function_label, now_ms
from hodei.logs import inv
from hodei.plugin import metrics
from hodei.plugin.data import DataLayer
from hodei.plugin.data.connection import Outage, keep_running
from hodei.plugin.data.leases import EndKind
from hodei.plugin.leader import LeaderLock
from hodei.plugin.settings import ServerSettings
from hodei.tasks import raise_if_cancelled

log = logging.getLogger(__name__)
TRIM_EVERY_S = 60.0


class HealthMonitor:
    def __init__(self, settings: ServerSettings, data: DataLayer, leader: LeaderLock) -> None:
        self.settings = settings
        self.data = data
        self.leader = leader
        self.tick_s = min(1.0, settings.heartbeat_interval_s / 2, settings.lease_ttl_s / 4)
        self._trim_due = 0.0
        self._gauges_due = 0.0
        self._grace_given: str | None = None

    async def run(self) -> None:
        await keep_running("health monitor", self._watch, log)

    async def _watch(self, outage: Outage) -> None:
        try:
            while True:
                raise_if_cancelled()
                await self.tick()
                outage.recovered()
                await asyncio.sleep(self.tick_s)
        except BaseException:
            # After an outage every lease gets its grace again: agents could not renew
            # them while Redis was away.
            self._grace_given = None
            raise

    async def tick(self) -> None:
        loop = asyncio.get_running_loop()
        if self.leader.is_leader:
            if self.leader.token != self._grace_given:
                # A new leadership (maybe after every server was down): agents get one lease
                # TTL to reconnect and renew before anything is reclaimed.
                await self.data.leases.extend_all()
                self._grace_given = self.leader.token
            await self.check_workers()
            await self.reap_leases()
            await self.expire_queued()
            if loop.time() >= self._trim_due:
                self._trim_due = loop.time() + TRIM_EVERY_S
                await self.trim_indexes()
        if loop.time() >= self._gauges_due:
            self._gauges_due = loop.time() + self.settings.gauge_interval_s
            await self.update_gauges()

    async def check_workers(self) -> None:
        """Missed heartbeats make a worker Unhealthy; Unhealthy for too long, Failed."""
        workers = self.data.workers
        now = now_ms()
        for worker_id in await workers.silent_since(
            now - int(self.settings.unhealthy_after_s * 1000)
        ):
            w = await workers.get(worker_id)
            if w is None:
                await workers.forget(worker_id)
                continue
            if w.state is WorkerState.UNHEALTHY:
                since = w.unhealthy_since_ms or now
                if now - since > self.settings.failed_after_s * 1000:
                    await workers.transition(worker_id, WorkerState.FAILED)
                    log.warning(
                        "worker %s failed: unhealthy for %.0fs",
                        worker_id,
                        (now - since) / 1000,
                        extra={"worker_id": worker_id},
                    )
            elif w.state in (WorkerState.FAILED, WorkerState.TERMINATED):
                if not await workers.jobs_of(worker_id):
                    await workers.forget(worker_id)
            elif await workers.transition(worker_id, WorkerState.UNHEALTHY):
                log.warning(
                    "worker %s unhealthy: no heartbeat for %.1fs",
                    worker_id,
                    (now - w.last_heartbeat_ms) / 1000,
                    extra={"worker_id": worker_id},
                )

    async def reap_leases(self) -> None:
        for ended in await self.data.leases.reclaim_due():
            metrics.LEASE_EXPIRIES.inc()
            if ended.kind is EndKind.RETRY:
                metrics.RETRIES.inc()
            else:
                label = function_label(ended.function, ended.revision)
                metrics.INVOCATIONS.labels(label, ended.status).inc()
            log.warning(
                "invocation %s: lease expired, %s",
                ended.invocation_id,
                "rescheduled" if ended.kind is EndKind.RETRY else "failed",
                extra=inv(ended.invocation_id),
            )

    async def expire_queued(self) -> None:
        """Fail queued invocations past their queue timeout (the one place that does)."""
        for expired in await self.data.queue.expire_due():
            metrics.INVOCATIONS.labels(
                function_label(expired.function, expired.revision), "failed"
            ).inc()
            log.info(
                "invocation %s failed after its queue timeout",
                expired.id,
                extra=inv(expired.id),
            )

    async def trim_indexes(self) -> None:
        """Drop index entries older than the retention (their records expired already)."""
        if self.settings.retention_s > 0:
            await self.data.invocations.trim(now_ms() - self.settings.retention_s * 1000)

    async def update_gauges(self) -> None:
        depth = await self.data.queue.depth()
        for priority, n in depth.per_priority.items():
            metrics.QUEUE_SIZE.labels(priority).set(n)
        counts = dict.fromkeys((s.value for s in WorkerState), 0)
        instances = {"idle": 0, "busy": 0, "starting": 0}
        for w in await self.data.workers.all():
            counts[w.state] += 1
            for p in w.pools:
                instances["idle"] += p.idle
                instances["busy"] += p.busy
                instances["starting"] += p.starting
            for resource, used, total in (
                ("cpu", w.used.cpu, w.capacity.cpu),
                ("memory", w.used.mem, w.capacity.mem),
                ("slots", w.used.slots, w.capacity.slots),
            ):
                if total > 0:
                    metrics.WORKER_UTILISATION.labels(w.id, resource).set(used / total)
        for state, n in counts.items():
            metrics.WORKERS.labels(state).set(n)
        for state, n in instances.items():
            metrics.INSTANCES.labels(state).set(n)
        metrics.DEAD_LETTERS.set(await self.data.invocations.dead_count())
