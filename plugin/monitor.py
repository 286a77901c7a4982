"""The seed's Health Monitor, run by the leader: heartbeat timeouts, lease reaping, gauges."""

from __future__ import annotations

import asyncio
import logging

from hodei.logs import inv
from hodei.plugin import metrics
from hodei.plugin.leader import LeaderLock
from hodei.plugin.leasing import Leases
from hodei.plugin.registry import Registry, WorkerState
from hodei.plugin.settings import ServerSettings
from hodei.plugin.store import Store, now_ms

log = logging.getLogger(__name__)
SLOW_EVERY_S = 0.5
PAGE = 500


class HealthMonitor:
    def __init__(
        self,
        settings: ServerSettings,
        store: Store,
        leases: Leases,
        registry: Registry,
        leader: LeaderLock,
    ) -> None:
        self.settings = settings
        self.store = store
        self.leases = leases
        self.registry = registry
        self.leader = leader
        self.tick_s = min(1.0, settings.heartbeat_interval_s / 2, settings.lease_ttl_s / 4)
        self._slow_due = 0.0
        self._gauges_due = 0.0
        self._cursors: dict[str, int] = {}
        self._grace_given: str | None = None

    async def run(self) -> None:
        while True:
            try:
                if self.leader.is_leader:
                    if self.leader.token != self._grace_given:
                        # A new leadership (maybe after every server was down): agents get
                        # one lease TTL to reconnect and renew before anything is reclaimed.
                        await self.leases.extend_all()
                        self._grace_given = self.leader.token
                    await self.check_workers()
                    await self.reap_leases()
                now = asyncio.get_running_loop().time()
                if self.leader.is_leader and now >= self._slow_due:
                    self._slow_due = now + SLOW_EVERY_S
                    await self.expire_queued()
                    await self.trim_indexes()
                if now >= self._gauges_due:
                    # Counting the queue by priority reads it whole: not every tick.
                    self._gauges_due = now + self.settings.gauge_interval_s
                    await self.update_gauges()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("health monitor pass failed", exc_info=True)
            await asyncio.sleep(self.tick_s)

    async def check_workers(self) -> None:
        """Missed heartbeats make a worker Unhealthy; Unhealthy for too long, Failed."""
        now = now_ms()
        silent = await self.registry.stale(now - int(self.settings.unhealthy_after_s * 1000))
        for worker_id in silent:
            h = await self.registry.get(worker_id)
            if h is None:
                await self.registry.forget(worker_id)
                continue
            state = WorkerState(h["state"])
            if state in (WorkerState.UNHEALTHY,):
                since = int(h.get("unhealthy_since") or now)
                if now - since > self.settings.failed_after_s * 1000:
                    await self.registry.transition(worker_id, WorkerState.FAILED)
                    log.warning(
                        "worker %s failed: unhealthy for %.0fs",
                        worker_id,
                        (now - since) / 1000,
                        extra={"worker_id": worker_id},
                    )
            elif state in (WorkerState.FAILED, WorkerState.TERMINATED):
                if not await self.registry.jobs_of(worker_id):
                    await self.registry.forget(worker_id)
            elif await self.registry.transition(worker_id, WorkerState.UNHEALTHY):
                log.warning(
                    "worker %s unhealthy: no heartbeat for %.1fs",
                    worker_id,
                    (now - int(h.get("last_heartbeat") or 0)) / 1000,
                    extra={"worker_id": worker_id},
                )

    async def reap_leases(self) -> None:
        for invocation_id in await self.leases.expired():
            result = await self.leases.reclaim(invocation_id)
            if result is None or (not result.recorded and not result.requeued):
                continue
            metrics.LEASE_EXPIRIES.inc()
            if result.requeued:
                metrics.RETRIES.inc()
            else:
                metrics.INVOCATIONS.labels(result.function, result.detail).inc()
            log.warning(
                "invocation %s: lease expired, %s",
                invocation_id,
                "rescheduled" if result.requeued else "failed",
                extra=inv(invocation_id),
            )

    async def expire_queued(self) -> None:
        """Fail queued invocations past their queue timeout, wherever they are (the
        scheduler only looks as deep as it can place work). At most PAGE of each set are
        looked at per call, the cursor moving on, so a deep queue costs the same per tick."""
        for queue in (self.store.keys.queue, self.store.keys.parked):
            self._cursors[queue] = await self._expire_page(queue, self._cursors.get(queue, 0))

    async def _expire_page(self, queue: str, start: int) -> int:
        redis, keys = self.store.redis, self.store.keys
        ids = await redis.zrange(queue, start, start + PAGE - 1)
        if not ids:
            return 0
        pipe = redis.pipeline(transaction=False)
        for i in ids:
            pipe.hget(keys.invocation(i.decode()), "queue_deadline")
        now = now_ms()
        expired = 0
        for raw, deadline in zip(ids, await pipe.execute(), strict=True):
            invocation_id = raw.decode()
            if deadline and int(deadline) <= now and await self.leases.expire_queued(invocation_id):
                expired += 1
                log.info(
                    "invocation %s failed after its queue timeout",
                    invocation_id,
                    extra=inv(invocation_id),
                )
        # What expired left the set: the next page starts that much earlier.
        return start + len(ids) - expired if len(ids) == PAGE else 0

    async def trim_indexes(self) -> None:
        """Drop index entries older than the retention (their records expired already)."""
        if self.settings.retention_s <= 0:
            return
        cutoff_ms = now_ms() - self.settings.retention_s * 1000
        keys = self.store.keys
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(keys.invocations, "-inf", cutoff_ms * 1000)  # ms * 1000 + seq
        pipe.zremrangebyscore(keys.dead, "-inf", cutoff_ms)
        await pipe.execute()

    async def update_gauges(self) -> None:
        depth = await self.store.queue_depth()
        for priority in ("high", "normal", "low"):
            metrics.QUEUE_SIZE.labels(priority).set(depth[priority])
        counts = dict.fromkeys((s.value for s in WorkerState), 0)
        for h in await self.registry.all():
            counts[h["state"]] = counts.get(h["state"], 0) + 1
            for resource, used, total in (
                ("cpu", "cpu_used", "cpu_total"),
                ("memory", "mem_used", "mem_total"),
                ("slots", "slots_used", "slots_total"),
            ):
                if int(h.get(total) or 0) > 0:
                    metrics.WORKER_UTILISATION.labels(h["id"], resource).set(
                        int(h.get(used) or 0) / int(h[total])
                    )
        for state, n in counts.items():
            metrics.WORKERS.labels(state).set(n)
        metrics.DEAD_LETTERS.set(await self.store.redis.zcard(self.store.keys.dead))
