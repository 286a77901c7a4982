"""Agent sessions: the open JobStreams of this server and what their messages mean.

An assignment is delivered on the stream of the server its worker is connected to; when
that is another server replica it travels over a per-server pub/sub channel. A lost
delivery is not lost work: the lease expires and the invocation is placed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from hodei.errors import NotFound, ProtocolError, StaleSession
from hodei.logs import inv
from hodei.plugin import metrics
from hodei.plugin.keys import Keys
from hodei.plugin.leasing import OUTCOMES, Leases
from hodei.plugin.registry import Registry, WorkerState
from hodei.plugin.scripts import RedisClient
from hodei.plugin.store import Store, now_ms
from hodei.proto import hodei_pb2 as pb

log = logging.getLogger(__name__)

ASSIGN, CANCEL = b"A", b"C"


async def route_cancel(
    redis: RedisClient, keys: Keys, worker_id: str, invocation_id: str, attempt: int, reason: str
) -> None:
    """Tell a worker to kill an attempt, through the server its stream is connected to."""
    request = pb.CancelJobRequest(invocation_id=invocation_id, attempt=attempt, reason=reason)
    server_id = await redis.hget(keys.worker(worker_id), "server_id")
    if server_id:
        await redis.publish(
            keys.server_channel(server_id.decode()),
            CANCEL + worker_id.encode() + b"\0" + request.SerializeToString(),
        )


@dataclass(eq=False)
class Session:
    worker_id: str
    session_id: str
    outbox: asyncio.Queue[pb.ServerMessage | None] = field(default_factory=asyncio.Queue)
    terminated: bool = False

    def send(self, message: pb.ServerMessage) -> None:
        self.outbox.put_nowait(message)


class Sessions:
    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        server_id: str,
        store: Store,
        leases: Leases,
        registry: Registry,
        events_maxlen: int,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.server_id = server_id
        self.store = store
        self.leases = leases
        self.registry = registry
        self.events_maxlen = events_maxlen
        self.by_worker: dict[str, Session] = {}

    # -- lifecycle ---------------------------------------------------------------------
    async def open(self, worker_id: str, session_id: str) -> Session:
        record = await self.registry.get(worker_id)
        if record is None:
            raise NotFound(f"worker {worker_id} is not registered")
        if record.get("session_id") != session_id or record.get("server_id") != self.server_id:
            raise ProtocolError(f"session {session_id} of worker {worker_id} is stale")
        if await self.registry.transition(worker_id, WorkerState.AVAILABLE, session_id) is None:
            raise ProtocolError(f"worker {worker_id} is {record.get('state')}, cannot connect")
        previous = self.by_worker.get(worker_id)
        if previous is not None:
            previous.outbox.put_nowait(None)
        session = Session(worker_id, session_id)
        self.by_worker[worker_id] = session
        metrics.STREAMS.set(len(self.by_worker))
        log.info(
            "worker %s connected (session %s)",
            worker_id,
            session_id,
            extra={"worker_id": worker_id},
        )
        return session

    async def close(self, session: Session) -> None:
        if self.by_worker.get(session.worker_id) is session:
            del self.by_worker[session.worker_id]
        metrics.STREAMS.set(len(self.by_worker))
        if session.terminated:
            return
        # The seed's "Running -> Unhealthy: connection lost": no new work; its leases run
        # out unless it reconnects and renews them.
        if await self.registry.transition(
            session.worker_id, WorkerState.UNHEALTHY, session.session_id
        ):
            log.warning(
                "worker %s lost its stream",
                session.worker_id,
                extra={"worker_id": session.worker_id},
            )

    # -- delivery ----------------------------------------------------------------------
    async def deliver(self, worker_id: str, server_id: str, request: pb.AssignJobRequest) -> None:
        session = self.by_worker.get(worker_id)
        if session is not None:
            session.send(pb.ServerMessage(assign=request))
        elif server_id and server_id != self.server_id:
            await self.redis.publish(
                self.keys.server_channel(server_id),
                ASSIGN + worker_id.encode() + b"\0" + request.SerializeToString(),
            )
        else:
            log.warning(
                "invocation %s: worker %s has no stream here; the lease will expire",
                request.invocation_id,
                worker_id,
                extra=inv(request.invocation_id, request.attempt, worker_id=worker_id),
            )

    async def cancel(self, worker_id: str, invocation_id: str, attempt: int, reason: str) -> None:
        request = pb.CancelJobRequest(invocation_id=invocation_id, attempt=attempt, reason=reason)
        session = self.by_worker.get(worker_id)
        if session is not None:
            session.send(pb.ServerMessage(cancel=request))
            return
        await route_cancel(self.redis, self.keys, worker_id, invocation_id, attempt, reason)

    def on_channel_message(self, data: bytes) -> None:
        """A delivery another server replica routed to one of our streams."""
        kind, rest = data[:1], data[1:]
        worker, _, body = rest.partition(b"\0")
        session = self.by_worker.get(worker.decode())
        if session is None:
            return
        if kind == ASSIGN:
            session.send(pb.ServerMessage(assign=pb.AssignJobRequest.FromString(body)))
        elif kind == CANCEL:
            session.send(pb.ServerMessage(cancel=pb.CancelJobRequest.FromString(body)))

    async def listen(self) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.keys.server_channel(self.server_id))
        try:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    self.on_channel_message(message["data"])
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    # -- agent messages ----------------------------------------------------------------
    async def handle(self, session: Session, message: pb.AgentMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "heartbeat":
            status = await self.heartbeat(
                session.worker_id, session.session_id, message.heartbeat, session
            )
            if status != "ok":
                # Declared Failed, or superseded: the agent must register again.
                raise StaleSession(f"session {session.session_id} is {status}: register again")
        elif kind == "accepted":
            await self._accepted(session, message.accepted)
        elif kind == "log":
            await self._log(session, message.log)
        elif kind == "result":
            await self._result(session, message.result)
        elif kind == "status":
            await self._status(session, message.status)
        else:
            raise ProtocolError("empty AgentMessage")

    async def heartbeat(
        self, worker_id: str, session_id: str, beat: pb.Heartbeat, session: Session | None = None
    ) -> str:
        running = [(j.invocation_id, j.attempt) for j in beat.running_jobs]
        runtimes = list(beat.runtimes.names) if beat.HasField("runtimes") else None
        status, revoked = await self.leases.renew(
            worker_id,
            session_id,
            running,
            beat.cpu_usage_percent,
            beat.memory_usage_percent,
            runtimes,
        )
        if status == "ok":
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
        return status

    async def _accepted(self, session: Session, msg: pb.JobAccepted) -> None:
        announced = await self.store.scripts.run(
            "accept",
            [self.keys.invocation(msg.invocation_id), self.keys.events],
            [msg.invocation_id, msg.attempt, session.worker_id, self.events_maxlen],
        )
        if announced:
            return
        log.warning(
            "invocation %s attempt %d: acceptance from %s for a job it does not hold",
            msg.invocation_id,
            msg.attempt,
            session.worker_id,
            extra=inv(msg.invocation_id, msg.attempt, worker_id=session.worker_id),
        )
        session.send(
            pb.ServerMessage(
                cancel=pb.CancelJobRequest(
                    invocation_id=msg.invocation_id, attempt=msg.attempt, reason="unknown job"
                )
            )
        )

    async def _log(self, session: Session, entry: pb.LogEntry) -> None:
        lines = [
            {"ts": line.ts_ms, "stream": line.stream, "line": line.line} for line in entry.lines
        ]
        if not await self.store.append_logs(
            entry.invocation_id, entry.attempt, session.worker_id, lines
        ):
            log.warning(
                "invocation %s attempt %d: dropping logs of a job %s does not hold",
                entry.invocation_id,
                entry.attempt,
                session.worker_id,
                extra=inv(entry.invocation_id, entry.attempt, worker_id=session.worker_id),
            )

    async def _result(self, session: Session, result: pb.JobResult) -> None:
        outcome = OUTCOMES.get(result.outcome)
        if outcome is None:
            raise ProtocolError(f"JobResult for {result.invocation_id} has no outcome")
        finish = await self.leases.finish(
            result.invocation_id,
            result.attempt,
            session.worker_id,
            outcome,
            exit_code=result.exit_code if outcome != "handed_back" else None,
            error=result.error,
            output=result.output,
            truncated=result.output_truncated,
            started_ms=result.started_at_ms or None,
            finished_ms=result.finished_at_ms or now_ms(),
            final=result.final,
        )
        if finish.recorded:
            metrics.INVOCATIONS.labels(finish.function, finish.detail).inc()
        elif finish.requeued:
            if finish.detail == "retry":
                metrics.RETRIES.inc()
        else:
            metrics.STALE_RESULTS.inc()
        session.send(
            pb.ServerMessage(
                ack=pb.ResultAck(
                    invocation_id=result.invocation_id,
                    attempt=result.attempt,
                    recorded=finish.recorded or finish.requeued,
                    reason=finish.detail,
                )
            )
        )

    async def _status(self, session: Session, status: pb.WorkerStatus) -> None:
        if status.state == pb.WORKER_STATE_DRAINING:
            await self.registry.transition(
                session.worker_id, WorkerState.DRAINING, session.session_id
            )
        elif status.state == pb.WORKER_STATE_TERMINATED:
            if await self.registry.jobs_of(session.worker_id):
                raise ProtocolError("a worker cannot terminate while it holds leases")
            session.terminated = True
            await self.registry.transition(
                session.worker_id, WorkerState.TERMINATED, session.session_id
            )
        else:
            raise ProtocolError(f"unexpected worker state {status.state} on the stream")
