"""Agent sessions: the open JobStreams of this server and what their messages mean.

An assignment is delivered on the stream of the server its worker is connected to; when
that is another server replica it goes through that server's inbox in Redis (kept there
until read, so neither an outage nor a restart of Redis loses it).

What an agent reports (acceptances, log lines, results) is recorded in batches: all the
messages that arrived while the previous batch was being recorded, in one round trip. A
result the store could not take (Redis away) is answered with ``retry``: the agent keeps
it and sends it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from hodei.domain import WorkerState, function_label
from hodei.errors import NotFound, ProtocolError, ServerStopping, StaleSession
from hodei.logs import inv
from hodei.plugin import metrics
from hodei.plugin.data import DataLayer
from hodei.plugin.data.connection import REDIS_DOWN, Outage, keep_running
from hodei.plugin.data.leases import Accept, Ended, EndKind, LogAppend, LogBatch
from hodei.plugin.data.records import CANCEL, InboxMessage
from hodei.plugin.reports import attempt_end, pools_of
from hodei.proto import hodei_pb2 as pb
from hodei.tasks import raise_if_cancelled

log = logging.getLogger(__name__)
T = TypeVar("T")
INBOX_WAIT_S = 5.0


@dataclass(eq=False)
class Session:
    worker_id: str
    session_id: str
    outbox: asyncio.Queue[pb.ServerMessage | None] = field(default_factory=asyncio.Queue)
    terminated: bool = False

    def send(self, message: pb.ServerMessage) -> None:
        self.outbox.put_nowait(message)


class Sessions:
    def __init__(self, data: DataLayer, instance_id: str) -> None:
        self.data = data
        self.instance_id = instance_id  # the route to this process: a worker's server_id
        self.by_worker: dict[str, Session] = {}
        self.outage = Outage("agent reports", log)
        self.stopping = asyncio.Event()  # set once: this server ends every stream

    # -- lifecycle ---------------------------------------------------------------------
    async def open(self, worker_id: str, session_id: str) -> Session:
        if self.stopping.is_set():  # before the worker is made available to the scheduler
            raise ServerStopping("this server is stopping: connect to another")
        record = await self.data.workers.get(worker_id)
        if record is None:
            raise NotFound(f"worker {worker_id} is not registered")
        if record.session_id != session_id or record.server_id != self.instance_id:
            raise ProtocolError(f"session {session_id[:8]}… of worker {worker_id} is stale")
        if await self.data.workers.transition(worker_id, WorkerState.AVAILABLE, session_id) is None:
            raise ProtocolError(f"worker {worker_id} is {record.state}, cannot connect")
        previous = self.by_worker.get(worker_id)
        if previous is not None:
            previous.outbox.put_nowait(None)
        session = Session(worker_id, session_id)
        if self.stopping.is_set():  # it was opening when the others were closed: it ends with them
            session.outbox.put_nowait(None)
        self.by_worker[worker_id] = session
        metrics.STREAMS.set(len(self.by_worker))
        log.info(
            "worker %s connected (session %s…)",
            worker_id,
            session_id[:8],
            extra={"worker_id": worker_id},
        )
        return session

    def stop(self) -> None:
        """The server is stopping: end every stream, and those that open from now on."""
        self.stopping.set()
        self.close_all()

    async def unless_stopping(self, awaitable: Awaitable[T]) -> T:
        """What ``awaitable`` gives; ServerStopping when the server begins to stop first (a
        stream waiting for an agent's first word must not hold the stop for its grace)."""
        waited = asyncio.ensure_future(awaitable)
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({waited, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not waited.done():
                raise ServerStopping("this server is stopping: connect to another")
            return waited.result()
        finally:
            stopping.cancel()
            waited.cancel()  # nothing when it is done

    def close_all(self) -> None:
        """End every open stream (its agent connects again)."""
        for session in self.by_worker.values():
            session.outbox.put_nowait(None)

    async def close(self, session: Session) -> None:
        if self.by_worker.get(session.worker_id) is session:
            del self.by_worker[session.worker_id]
        metrics.STREAMS.set(len(self.by_worker))
        if session.terminated:
            return
        # The seed's "Running -> Unhealthy: connection lost": no new work; its leases run
        # out unless it reconnects and renews them.
        try:
            moved = await self.data.workers.transition(
                session.worker_id, WorkerState.UNHEALTHY, session.session_id
            )
        except REDIS_DOWN:
            return  # the monitor finds it silent later
        if moved:
            log.warning(
                "worker %s lost its stream",
                session.worker_id,
                extra={"worker_id": session.worker_id},
            )

    # -- delivery ----------------------------------------------------------------------
    async def deliver(self, deliveries: Sequence[tuple[str, str, pb.ServerMessage]]) -> None:
        """Send each message (an assignment, a pre-warm request) down its worker's stream,
        here or through the inbox of the server the worker is connected to."""
        remote: list[tuple[str, str, bytes]] = []
        for worker_id, server_id, message in deliveries:
            session = self.by_worker.get(worker_id)
            if session is not None:
                session.send(message)
            elif server_id and server_id != self.instance_id:
                remote.append((server_id, worker_id, message.SerializeToString()))
            elif message.HasField("assign"):
                request = message.assign
                log.warning(
                    "invocation %s: worker %s has no stream here; the lease will expire",
                    request.invocation_id,
                    worker_id,
                    extra=inv(request.invocation_id, request.attempt, worker_id=worker_id),
                )
        await self.data.inboxes.deliver(remote)

    async def cancel(self, worker_id: str, invocation_id: str, attempt: int, reason: str) -> None:
        request = pb.CancelJobRequest(invocation_id=invocation_id, attempt=attempt, reason=reason)
        session = self.by_worker.get(worker_id)
        if session is not None:
            session.send(pb.ServerMessage(cancel=request))
            return
        record = await self.data.workers.get(worker_id)
        if record is not None and record.server_id:
            await self.data.inboxes.cancel(
                record.server_id, worker_id, invocation_id, attempt, reason
            )

    def on_inbox(self, message: InboxMessage) -> None:
        """A delivery routed to one of our streams (by another replica, or a cancel)."""
        session = self.by_worker.get(message.worker_id)
        if session is None:
            return
        if message.kind == CANCEL:
            cancel = pb.CancelJobRequest(
                invocation_id=message.invocation_id, attempt=message.attempt, reason=message.reason
            )
            session.send(pb.ServerMessage(cancel=cancel))
        else:
            session.send(pb.ServerMessage.FromString(message.body))

    async def listen(self) -> None:
        """Read this server's inbox for as long as the server lives."""

        async def receive(outage: Outage) -> None:
            while True:
                raise_if_cancelled()
                messages = await self.data.inboxes.receive(self.instance_id, INBOX_WAIT_S)
                outage.recovered()
                for message in messages:
                    self.on_inbox(message)

        await keep_running("inbox", receive, log)

    # -- agent messages ----------------------------------------------------------------
    async def handle(self, session: Session, received: Sequence[pb.AgentMessage]) -> None:
        """Stream messages (batches among them): reports in one round trip, the rest in
        order around them."""
        messages = [
            inner
            for message in received
            for inner in (message.batch.messages if message.HasField("batch") else [message])
        ]
        reports: list[pb.AgentMessage] = []
        for m in messages:
            kind = m.WhichOneof("kind")
            if kind in ("accepted", "log", "result"):
                reports.append(m)
                continue
            await self._report(session, reports)
            reports = []
            if kind == "heartbeat":
                status = await self.heartbeat(
                    session.worker_id, session.session_id, m.heartbeat, session
                )
                if status != "ok":
                    # Declared Failed, or superseded: the agent must register again.
                    raise StaleSession(
                        f"session {session.session_id[:8]}… is {status}: register again"
                    )
            elif kind == "status":
                await self._status(session, m.status)
            elif kind == "batch":
                raise ProtocolError("batches do not nest")
            else:
                raise ProtocolError("empty AgentMessage")
        await self._report(session, reports)

    async def heartbeat(
        self, worker_id: str, session_id: str, beat: pb.Heartbeat, session: Session | None = None
    ) -> str:
        running = [(j.invocation_id, j.attempt) for j in beat.running_jobs]
        runtimes = list(beat.runtimes.names) if beat.HasField("runtimes") else None
        status, revoked = await self.data.leases.renew(
            worker_id,
            session_id,
            running,
            beat.cpu_usage_percent,
            beat.memory_usage_percent,
            runtimes,
            pools_of(beat),
        )
        if status != "ok":
            return str(status)
        metrics.WORKER_HEARTBEATS.labels(worker_id).inc()
        metrics.WORKER_CPU.labels(worker_id).set(beat.cpu_usage_percent)
        metrics.WORKER_MEMORY.labels(worker_id).set(beat.memory_usage_percent)
        attempts = dict(running)
        for invocation_id in revoked:
            log.info(
                "invocation %s is no longer leased to %s: cancelling it there",
                invocation_id,
                worker_id,
                extra=inv(invocation_id, worker_id=worker_id),
            )
            if session is not None:
                session.send(
                    pb.ServerMessage(
                        cancel=pb.CancelJobRequest(
                            invocation_id=invocation_id,
                            attempt=attempts[invocation_id],
                            reason="lease revoked",
                        )
                    )
                )
        return "ok"

    async def _report(self, session: Session, messages: list[pb.AgentMessage]) -> None:
        if not messages:
            return
        worker = session.worker_id
        results = [m.result for m in messages if m.HasField("result")]
        logs = [
            LogBatch(
                m.log.invocation_id,
                m.log.attempt,
                worker,
                [(line.ts_ms, line.stream, line.line) for line in m.log.lines],
            )
            for m in messages
            if m.HasField("log")
        ]
        # A quick job's acceptance comes with its end, which announces the start itself
        # (unless log lines come between: the start is told before them).
        ending = {(r.invocation_id, r.attempt) for r in results}
        ending -= {(b.invocation_id, b.attempt) for b in logs}
        acceptances = [
            (m.accepted.invocation_id, m.accepted.attempt)
            for m in messages
            if m.HasField("accepted")
        ]
        accepted = [Accept(*job, worker) for job in acceptances if job not in ending]
        folded = ending.intersection(acceptances)
        ends = [attempt_end(worker, r, (r.invocation_id, r.attempt) in folded) for r in results]
        try:
            reports = await self.data.leases.report(accepted, logs, ends)
        except REDIS_DOWN as exc:
            self.outage.failed(exc)
            for r in results:
                session.send(
                    pb.ServerMessage(
                        ack=pb.ResultAck(
                            invocation_id=r.invocation_id,
                            attempt=r.attempt,
                            recorded=False,
                            retry=True,
                            reason="store unavailable",
                        )
                    )
                )
            return
        self.outage.recovered()
        for a, held in zip(accepted, reports.accepted, strict=True):
            if not held:
                self._refuse(session, a)
        for batch, appended in zip(logs, reports.logged, strict=True):
            if appended is LogAppend.NOT_HELD:
                log.warning(
                    "invocation %s attempt %d: dropping logs of a job %s does not hold",
                    batch.invocation_id,
                    batch.attempt,
                    worker,
                    extra=inv(batch.invocation_id, batch.attempt, worker_id=worker),
                )
        for result, ended in zip(results, reports.ended, strict=True):
            self._acknowledge(session, result, ended)

    def _refuse(self, session: Session, a: Accept) -> None:
        log.warning(
            "invocation %s attempt %d: acceptance from %s for a job it does not hold",
            a.invocation_id,
            a.attempt,
            a.worker_id,
            extra=inv(a.invocation_id, a.attempt, worker_id=a.worker_id),
        )
        session.send(
            pb.ServerMessage(
                cancel=pb.CancelJobRequest(
                    invocation_id=a.invocation_id, attempt=a.attempt, reason="unknown job"
                )
            )
        )

    @staticmethod
    def _acknowledge(session: Session, result: pb.JobResult, ended: Ended) -> None:
        if ended.kind is EndKind.RECORDED:
            metrics.INVOCATIONS.labels(
                function_label(ended.function, ended.revision), ended.status
            ).inc()
        if ended.taken and result.HasField("cold_start"):
            start = "cold" if result.cold_start else "warm"
            metrics.STARTS.labels(function_label(ended.function, ended.revision), start).inc()
        if ended.kind is EndKind.RETRY:
            metrics.RETRIES.inc()
        elif ended.kind is EndKind.STALE:
            metrics.STALE_RESULTS.inc()
        log.info(
            "invocation %s attempt %d on %s: %s %s",
            result.invocation_id,
            result.attempt,
            session.worker_id,
            ended.kind,
            ended.status or ended.reason,
            extra=inv(result.invocation_id, result.attempt, worker_id=session.worker_id),
        )
        session.send(
            pb.ServerMessage(
                ack=pb.ResultAck(
                    invocation_id=result.invocation_id,
                    attempt=result.attempt,
                    recorded=ended.taken,
                    reason=ended.status or ended.reason or str(ended.kind),
                )
            )
        )

    async def _status(self, session: Session, status: pb.WorkerStatus) -> None:
        if status.state == pb.WORKER_STATE_DRAINING:
            await self.data.workers.transition(
                session.worker_id, WorkerState.DRAINING, session.session_id
            )
        elif status.state == pb.WORKER_STATE_TERMINATED:
            if await self.data.workers.jobs_of(session.worker_id):
                raise ProtocolError("a worker cannot terminate while it holds leases")
            session.terminated = True
            await self.data.workers.transition(
                session.worker_id, WorkerState.TERMINATED, session.session_id
            )
        else:
            raise ProtocolError(f"unexpected worker state {status.state} on the stream")
