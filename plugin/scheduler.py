"""The leader's scheduler: woken by what may let something be placed, places queued work by
bin-packing.

There is no polling interval. The scheduler blocks on the wake-up stream, which enqueues,
freed capacity and worker changes write to (log lines and the other domain events never
wake it), so it wakes on exactly the things that can make a placement possible; a timeout
serves due retries (and reads the queue once more). Its view of the fleet is kept in
memory: capacity freed is applied from the wake-ups themselves, and a worker is read again
only when it changed; once a pass emptied the ready queue, what joins it is known from the
wake-ups too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from hodei import tracing
from hodei.domain import now_ms
from hodei.errors import NotFound
from hodei.logs import inv
from hodei.plugin import assignment, metrics, prewarm
from hodei.plugin.data import DataLayer
from hodei.plugin.data.connection import REDIS_DOWN, Outage
from hodei.plugin.data.events import Entry, stream_position
from hodei.plugin.data.leases import Lease, Refusal
from hodei.plugin.data.records import WorkerRecord
from hodei.plugin.fleet_view import Waiting, demand_of, view_of
from hodei.plugin.leader import LeaderLock
from hodei.plugin.pending_reasons import PendingReasons
from hodei.plugin.placement import Demand, Fleet, Pending, WorkerView
from hodei.plugin.settings import ServerSettings
from hodei.proto import hodei_pb2 as pb
from hodei.tasks import raise_if_cancelled

log = logging.getLogger(__name__)

# (worker, its server, a message): delivered on the worker's stream, wherever it is.
Deliver = Callable[[Sequence[tuple[str, str, pb.ServerMessage]]], Awaitable[None]]
FULL_REFRESH_S = 30.0
PREWARM_EVERY_S = 5.0  # specs change without a wake-up (a PUT): look this often
# After a pass that placed several invocations or left the fleet full, the next starts no
# sooner than this: under load, what queues and frees meanwhile is placed in one pass (a
# few round trips) instead of one pass per invocation or per enqueue. A pass that placed
# one call alone (a serial caller) or nothing does not delay the next: the caller's next
# call is placed at once.
PASS_GAP_S = 0.002
# Wake-ups taken in per read; a full read may have left some (a queued one among them).
WAKEUPS_PER_READ = 1000


class Scheduler:
    def __init__(
        self, data: DataLayer, settings: ServerSettings, leader: LeaderLock, deliver: Deliver
    ) -> None:
        self.data = data
        self.settings = settings
        self.leader = leader
        self.deliver = deliver
        self.fleet = Fleet(settings.max_candidates, settings.max_scan)
        self._waiting: dict[str, Waiting] = {}
        self.placements = 0  # invocations placed by this scheduler
        self.reasons = PendingReasons(data.queue)
        self._cursor = "0-0"
        # Per worker, the wake-up stream position its record was read at: capacity freed
        # before it is already in the record.
        self._synced: dict[str, str] = {}
        self._next_due: int | None = None
        # The last pass left the ready queue empty; the wake-ups read since then name all
        # that joined it: a pass needs no read of its head then (``_known_head``).
        self._drained = False
        self._known_head: list[str] | None = None
        self._refreshed_at = 0.0
        self._heartbeat_ms = int(settings.heartbeat_interval_s * 1000)
        # The instance numbers sent to workers (pre-warming), and when to look again.
        self._floors: prewarm.Plan = {}
        self._prewarm_due = 0.0
        # Consul's verdict when Consul is configured: work goes only to passing workers.
        self.gate: Callable[[str], bool] | None = None

    async def run(self) -> None:
        outage = Outage("scheduler", log)
        while True:
            raise_if_cancelled()
            self.leader.changed.clear()
            token = self.leader.token
            if token is None:
                metrics.IS_LEADER.set(0)
                await self.leader.changed.wait()
                continue
            metrics.IS_LEADER.set(1)
            try:
                await self._lead(token, outage)
            except asyncio.CancelledError:
                raise
            except REDIS_DOWN as exc:
                await asyncio.sleep(outage.failed(exc))
            except Exception:
                log.exception("scheduler pass failed; starting over")
                await asyncio.sleep(0.5)

    async def _lead(self, token: str, outage: Outage) -> None:
        log.info("scheduling as leader %s", token)
        await self._load()
        outage.recovered()
        while self.leader.token == token:
            raise_if_cancelled()
            started, placed_before = time.monotonic(), self.placements
            placed_all = await self.schedule_pass(token)
            if self.leader.token != token:
                break
            await self.reasons.publish_due()
            rest = PASS_GAP_S - (time.monotonic() - started)
            busy = self.placements - placed_before > 1 or not self.fleet.has_room
            if busy and rest > 0:
                await asyncio.sleep(rest)
            await self._wait(self._timeout_ms() if placed_all else None)

    async def _load(self) -> None:
        """A fresh view of the fleet, read in one transaction with the wake-up stream's
        position: changes after it are applied from the stream, none twice."""
        snapshot = await self.data.workers.snapshot()
        self._cursor = snapshot.position
        self.fleet = Fleet(self.settings.max_candidates, self.settings.max_scan)
        now = now_ms()
        for w in snapshot.workers:
            self.fleet.upsert(self._view(w, now))
        self._synced = dict.fromkeys(self.fleet.workers, snapshot.position)
        # What the wake-ups told of the queue ends with the view: the position just taken
        # skips the entries between, so the next pass reads the queue.
        self._drained, self._known_head = False, None
        self._waiting.clear()
        self.reasons.clear()
        self._floors = {}  # a new leadership tells every worker again
        self._prewarm_due = 0.0
        self._next_due = await self.data.queue.next_due_ms()
        self._refreshed_at = time.monotonic()
        await self.unpark()

    def _view(self, w: WorkerRecord, now: int) -> WorkerView:
        view = view_of(w, now, self._heartbeat_ms)
        if self.gate is not None and view.schedulable and not self.gate(view.id):
            view = replace(view, schedulable=False)
        return view

    def _timeout_ms(self) -> int:
        wait = 1000
        if self._next_due is not None:
            wait = min(wait, max(1, self._next_due - now_ms()))
        reasons_due = self.reasons.wait_ms()
        if reasons_due is not None:
            wait = min(wait, reasons_due)
        return wait

    async def _wait(self, block_ms: int | None) -> None:
        """Take in what happened since the last look (waiting up to ``block_ms`` for
        something when there is nothing to do)."""
        entries = await self.data.events.wakeups(self._cursor, block_ms, WAKEUPS_PER_READ)
        dirty: set[str] = set()
        for entry in entries:
            self._cursor = entry.id
            self._take(entry, dirty)
        self._known_head = self._head_from(entries)
        if time.monotonic() - self._refreshed_at > FULL_REFRESH_S:
            await self._load()
            return
        if dirty:
            await self._refresh(dirty)
            await self.unpark()
        if dirty or time.monotonic() >= self._prewarm_due:
            await self.prewarm()

    def _head_from(self, entries: list[Entry]) -> list[str] | None:
        """The ready queue's head when the wake-ups tell it: the queue was left empty and
        at most one invocation joined it since (more would need the queue's order). A
        quiet timeout reads the queue all the same: what no wake-up told (none is lost
        but to a trim of the stream) waits a second at most."""
        if not self._drained or not entries or len(entries) >= WAKEUPS_PER_READ:
            return None
        joined = [e.fields["invocation"] for e in entries if e.type == "queued"]
        if len(joined) > 1 or any(e.type == "unparked" for e in entries):
            return None
        return joined

    def _take(self, entry: Entry, dirty: set[str]) -> None:
        f = entry.fields
        kind = entry.type
        if kind == "queued":
            invocation_id = f["invocation"]
            if invocation_id not in self._waiting:
                self._waiting[invocation_id] = Waiting(f["function"], f["revision"], "")
        elif kind == "freed":
            worker = f["worker"]
            synced = self._synced.get(worker, "0-0")
            if worker in self.fleet.workers and stream_position(entry.id) > stream_position(synced):
                self.fleet.release(worker, Demand(int(f["cpu"]), int(f["mem"]), int(f["gpu"])))
        elif kind in ("worker", "pools"):
            dirty.add(f["worker"])
        elif kind == "retry":
            due = int(f["due"])
            self._next_due = due if self._next_due is None else min(self._next_due, due)

    async def _refresh(self, worker_ids: set[str]) -> None:
        ids = sorted(worker_ids)
        snapshot = await self.data.workers.snapshot(ids)
        now = now_ms()
        found = {w.id: w for w in snapshot.workers}
        for worker_id in ids:
            record = found.get(worker_id)
            if record is None:
                self.fleet.remove(worker_id)
                self._synced.pop(worker_id, None)
            else:
                self.fleet.upsert(self._view(record, now))
                self._synced[worker_id] = snapshot.position

    async def refresh_gate(self, worker_ids: set[str]) -> None:
        """Consul's verdict on these workers changed (called on the leader)."""
        await self._refresh(worker_ids)

    async def unpark(self) -> None:
        """Give parked invocations another look, the revisions the fleet may now take."""
        for function, revision in await self.data.queue.parked_revisions():
            try:
                spec = await self.data.functions.spec(function, revision)
            except NotFound:
                continue
            if not self.fleet.why_not(demand_of(spec, revision)).structural:
                moved = await self.data.queue.unpark(function, revision)
                self._known_head = None
                log.info("%d parked invocations of %s back in line", moved, function)

    async def prewarm(self) -> None:
        """Tell workers how many instances of each lambda function to keep started."""
        self._prewarm_due = time.monotonic() + PREWARM_EVERY_S
        specs = [
            (spec, spec.revision)
            for spec in await self.data.functions.all()
            if spec.interface == "lambda"
        ]
        wanted = prewarm.plan(specs, self.fleet)
        by_key = {f"{spec.name}:{revision}": (spec, revision) for spec, revision in specs}
        messages: list[tuple[str, str, pb.ServerMessage]] = []
        for (worker_id, key), count in prewarm.changes(self._floors, wanted).items():
            w = self.fleet.workers.get(worker_id)
            if w is None or (key not in by_key and count):
                continue
            if key in by_key:
                template = assignment.function_template(*by_key[key])
            else:  # a function gone or replaced: its floor goes
                function, _, revision = key.rpartition(":")
                template = pb.AssignJobRequest(function=function, revision=revision)
            request = pb.PrewarmRequest(function=template, count=count)
            messages.append((worker_id, w.server_id, pb.ServerMessage(prewarm=request)))
            log.info("worker %s: keep %d instances of %s", worker_id, count, key)
        self._floors = wanted
        await self.deliver(messages)

    async def schedule_pass(self, token: str) -> bool:
        """Place what can be placed now. True when the queue head was worked through."""
        known, self._known_head, self._drained = self._known_head, None, False
        if self._next_due is not None and self._next_due <= now_ms():
            await self.data.queue.promote_due()
            self._next_due = await self.data.queue.next_due_ms()
            known = None
        # A few free slots need no long look at the head: the window grows with the number
        # of workers with room, up to the batch.
        batch = min(self.settings.scheduler_batch, max(32, 4 * self.fleet.open_workers))
        offset = 0
        # Unplaceable invocations (too big, waiting for capacity) never hide placeable ones
        # behind them: the scan goes on until the queue ends or no worker has room left.
        while True:
            ids = known if known is not None else await self.data.queue.head(offset, batch)
            known = None
            if not ids:
                self._drained = offset == 0
                return True
            await self._describe(ids)
            plan = self._plan(ids)
            leased = await self._commit(plan, token)
            await self._note_pending(ids)
            self._drained = offset == 0 and len(ids) < batch and leased == len(ids)
            if len(ids) < batch or self.leader.token != token or not self.fleet.has_room:
                return True
            if plan:
                # The head moved; the next pass starts from the top again.
                return False
            offset += len(ids)

    async def _describe(self, ids: list[str]) -> None:
        unknown = [i for i in ids if i not in self._waiting]
        if unknown:
            for i, q in zip(unknown, await self.data.queue.describe(unknown), strict=True):
                if q is not None:
                    self._waiting[i] = Waiting(q.function, q.revision, q.pending_reason)
        for i in ids:
            w = self._waiting.get(i)
            if w is not None and w.demand is None:
                try:
                    spec = await self.data.functions.spec(w.function, w.revision)
                    w.demand = demand_of(spec, w.revision)
                except NotFound:
                    del self._waiting[i]  # its revision is gone: the queue timeout ends it

    def _plan(self, ids: list[str]) -> list[tuple[str, str]]:
        plan: list[tuple[str, str]] = []
        for i in ids:
            w = self._waiting.get(i)
            if w is None or w.demand is None:
                continue
            if w.pending_reason and not self.fleet.has_room:
                # Every slot is taken: its reason still holds, and looking again at each of
                # a deep queue's head after every placement would cost more than the job.
                continue
            w.decided_ns = time.time_ns()
            started = time.perf_counter()
            choice = self.fleet.place(w.demand)
            metrics.DECISION_SECONDS.observe(time.perf_counter() - started)
            if isinstance(choice, Pending):
                w.pending_reason = choice.reason
                w.structural = choice.structural
                continue
            self.fleet.reserve(choice.id, w.demand)
            plan.append((i, choice.id))
        return plan

    async def _commit(self, plan: list[tuple[str, str]], token: str) -> int:
        """Lease what the plan placed and deliver it; how many were leased."""
        if not plan:
            return 0
        leased = 0
        results = await self.data.leases.assign_many(plan, token)
        now = now_ms()
        deliveries: list[tuple[str, str, pb.ServerMessage]] = []
        for (invocation_id, worker_id), result in zip(plan, results, strict=True):
            waiting = self._waiting.pop(invocation_id, None)
            self.reasons.forget(invocation_id)
            if isinstance(result, Lease):
                spec = await self.data.functions.spec(result.function, result.revision)
                message = pb.ServerMessage(assign=assignment.request(result, spec))
                self._placed(result, now, waiting)
                leased += 1
                deliveries.append((worker_id, self.fleet.workers[worker_id].server_id, message))
                continue
            if waiting is not None and waiting.demand is not None:
                self.fleet.release(worker_id, waiting.demand)
            if result is Refusal.NOT_LEADER:
                log.warning("fenced off: leadership %s is over", token)
                self.leader.token = None
                self.leader.changed.set()
                break
            if result in (Refusal.NOT_SCHEDULABLE, Refusal.DOES_NOT_FIT):
                if waiting is not None:
                    self._waiting[invocation_id] = waiting
                await self._refresh({worker_id})
        await self.deliver(deliveries)
        return leased

    def _placed(self, lease: Lease, now: int, waiting: Waiting | None) -> None:
        self.placements += 1
        metrics.PLACEMENTS.inc()
        if lease.attempt == 1:
            metrics.SCHEDULING_LATENCY.observe(max(0, now - lease.created_ms) / 1000)
        metrics.QUEUE_WAIT.observe(max(0, now - lease.queued_ms) / 1000)
        if tracing.active() and waiting is not None:
            self._trace(lease, waiting)
        log.info(
            "invocation %s attempt %d leased to %s",
            lease.invocation_id,
            lease.attempt,
            lease.worker_id,
            extra=inv(lease.invocation_id, lease.attempt, worker_id=lease.worker_id),
        )

    @staticmethod
    def _trace(lease: Lease, waiting: Waiting) -> None:
        attributes = {
            "hodei.invocation_id": lease.invocation_id,
            "hodei.function": lease.function,
            "hodei.attempt": lease.attempt,
            "hodei.worker_id": lease.worker_id,
        }
        tracing.span(
            "queue wait",
            lease.traceparent,
            lease.queued_ms * 1_000_000,
            waiting.decided_ns,
            attributes,
        )
        tracing.span("schedule", lease.traceparent, waiting.decided_ns, time.time_ns(), attributes)

    async def _note_pending(self, ids: list[str]) -> None:
        """Note pending reasons that changed, and park what only a fleet change helps."""
        to_park: dict[str, str] = {}
        for i in ids:
            w = self._waiting.get(i)
            if w is None or not w.pending_reason:
                continue
            if w.structural:
                # Out of the ready queue until the fleet changes: passes stay cheap however
                # many such invocations pile up.
                to_park[i] = w.pending_reason
                del self._waiting[i]
                self.reasons.forget(i)
            elif w.pending_reason != w.published_reason:
                self.reasons.note(i, w.pending_reason)
                w.published_reason = w.pending_reason
        await self.data.queue.park(to_park)
