"""The gRPC WorkerService: translates protobuf to the session layer, and errors to status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeAlias

import grpc
from google.protobuf import empty_pb2

from hodei import __version__
from hodei.errors import (
    Impersonation,
    NotFound,
    PinRefused,
    ProtocolError,
    ServerStopping,
    StaleSession,
)
from hodei.plugin import worker_calls
from hodei.plugin.agent_identity import AgentIdentities, Caller, Refusal, foreign_worker
from hodei.plugin.sessions import Sessions
from hodei.proto import hodei_pb2 as pb
from hodei.proto import hodei_pb2_grpc as pb_grpc
from hodei.streams import drain

log = logging.getLogger(__name__)
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

READ_AHEAD = 256  # agent messages received and not yet handled, at most
# How long a stopping server's stream waits for the reports received before the stop to be
# recorded, so that their answers go out before it ends (Redis round trips; a failed one
# answers at once).
STOP_FLUSH_S = 2.0
PIN_CODES = {
    "not_queued": grpc.StatusCode.FAILED_PRECONDITION,
    "not_schedulable": grpc.StatusCode.FAILED_PRECONDITION,
    "does_not_fit": grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class WorkerService(pb_grpc.WorkerServiceServicer):
    def __init__(
        self, sessions: Sessions, identities: AgentIdentities, pin_timeout_s: float = 10.0
    ) -> None:
        self.sessions = sessions
        self.identities = identities
        self.pin_timeout_s = pin_timeout_s

    async def _caller(self, context: Context) -> Caller:
        caller = self.identities.identify(
            context.invocation_metadata() or (), context.auth_context() or {}
        )
        if caller is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid credentials")
            raise AssertionError("unreachable")
        return caller

    async def _refuse(self, context: Context, refusal: Refusal | None, what: str) -> None:
        if refusal is not None:
            log.warning("refused %s: %s", what, refusal.message)
            await context.abort(refusal.code, refusal.message)

    async def RegisterWorker(
        self, request: pb.RegisterWorkerRequest, context: Context
    ) -> pb.WorkerStatus:
        caller = await self._caller(context)
        problem = _invalid_registration(request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        worker_id = request.worker_id
        record = await self.sessions.data.workers.get(worker_id) if caller.fleet else None
        held = bool(record and await self.sessions.data.workers.jobs_of(worker_id))
        refusal = self.identities.registers(caller, worker_id, record, held)
        await self._refuse(context, refusal, f"registration of worker {worker_id}")
        return await worker_calls.register(self.sessions, request, __version__)

    async def Heartbeat(self, request: pb.Heartbeat, context: Context) -> empty_pb2.Empty:
        caller = await self._caller(context)
        refusal = self.identities.acts_as(caller, request.worker_id)
        await self._refuse(context, refusal, f"heartbeat of worker {request.worker_id}")
        status = await self.sessions.heartbeat(request.worker_id, request.session_id, request)
        if status == "unknown":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"worker {request.worker_id} unknown")
        if status == "stale":
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "stale session: register again"
            )
        return empty_pb2.Empty()

    async def GetWorkerStatus(
        self, request: pb.GetWorkerStatusRequest, context: Context
    ) -> pb.WorkerStatus:
        caller = await self._caller(context)
        worker_id = request.worker_id
        record = await self.sessions.data.workers.get(worker_id) if caller.fleet else None
        if not self.identities.reads_status(caller, worker_id, record):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the status of worker {worker_id} needs operator credentials or its own",
            )
        try:
            return await worker_calls.status(self.sessions, worker_id)
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            raise

    async def AssignJob(self, request: pb.AssignJobRequest, context: Context) -> pb.JobAccepted:
        if not (await self._caller(context)).operator:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "pinning a job needs operator credentials"
            )
        if not request.invocation_id or not request.worker_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "invocation_id and worker_id are required"
            )
        try:
            return await worker_calls.pin(
                self.sessions, request.invocation_id, request.worker_id, self.pin_timeout_s
            )
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except PinRefused as exc:
            await context.abort(PIN_CODES.get(exc.refusal, grpc.StatusCode.ABORTED), str(exc))
        except TimeoutError as exc:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        raise AssertionError("unreachable")

    async def JobStream(
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: Context
    ) -> AsyncIterator[pb.ServerMessage]:
        caller = await self._caller(context)
        try:
            first = await self.sessions.unless_stopping(anext(aiter(request_iterator)))
        except StopAsyncIteration:
            return
        except ServerStopping as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            raise
        if first.WhichOneof("kind") != "status" or not first.status.worker_id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "the first JobStream message must be a WorkerStatus",
            )
        refusal = self.identities.acts_as(caller, first.status.worker_id)
        await self._refuse(context, refusal, f"stream of worker {first.status.worker_id}")
        try:
            session = await self.sessions.open(first.status.worker_id, first.status.session_id)
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            raise
        except ProtocolError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise
        except ServerStopping as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            raise
        failure: list[BaseException] = []
        # Read ahead of the handling: what arrives while one report is being recorded is
        # recorded together in the next round trip.
        received: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue(READ_AHEAD)

        async def receive() -> None:
            try:
                async for message in request_iterator:
                    if other := foreign_worker(message, session.worker_id):
                        raise Impersonation(
                            f"the stream of worker {session.worker_id} spoke for worker {other}"
                        )
                    await received.put(message)
            except ProtocolError as exc:
                failure.append(exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "stream of worker %s broke: %s",
                    session.worker_id,
                    exc,
                    extra={"worker_id": session.worker_id},
                )
            await received.put(None)

        async def handle() -> None:
            try:
                while (message := await received.get()) is not None:
                    messages, ended = drain(message, received)
                    try:
                        await self.sessions.handle(session, messages)
                    except ProtocolError:
                        raise
                    except Exception:
                        # One message that could not be handled must not cost the worker
                        # its stream; what it carried is recovered by leases and resends.
                        log.exception(
                            "worker %s: cannot handle %s",
                            session.worker_id,
                            ", ".join(sorted({str(m.WhichOneof("kind")) for m in messages})),
                            extra={"worker_id": session.worker_id},
                        )
                    if ended:
                        break
            except ProtocolError as exc:
                failure.append(exc)
            finally:
                session.outbox.put_nowait(None)

        receiver = asyncio.create_task(receive())
        handler = asyncio.create_task(handle())
        try:
            while (message := await session.outbox.get()) is not None:
                batch, ended = drain(message, session.outbox)
                if len(batch) == 1:
                    yield message
                else:
                    yield pb.ServerMessage(batch=pb.ServerMessages(messages=batch))
                if ended:
                    break
            if self.sessions.stopping.is_set():
                # Ended by the stop: what the agent sent before it is recorded and answered
                # first (else it sends its results again elsewhere, or waits out its drain).
                receiver.cancel()
                await finish_handling(received, handler)
                for batch in leftovers(session.outbox):
                    yield pb.ServerMessage(batch=pb.ServerMessages(messages=batch))
        finally:
            for task in (receiver, handler):
                task.cancel()
            await asyncio.gather(receiver, handler, return_exceptions=True)
            await self.sessions.close(session)
        if failure:
            code = grpc.StatusCode.INVALID_ARGUMENT
            if isinstance(failure[0], StaleSession):
                code = grpc.StatusCode.FAILED_PRECONDITION
            elif isinstance(failure[0], Impersonation):
                code = grpc.StatusCode.PERMISSION_DENIED
                log.warning("refused: %s", failure[0], extra={"worker_id": session.worker_id})
            await context.abort(code, str(failure[0]))


async def finish_handling(
    received: asyncio.Queue[pb.AgentMessage | None], handler: asyncio.Task[None]
) -> None:
    """Let ``handler`` handle what was received and end, within STOP_FLUSH_S."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(STOP_FLUSH_S):
            await received.put(None)
            await asyncio.wait({handler})


def leftovers(outbox: asyncio.Queue[pb.ServerMessage | None]) -> Iterator[list[pb.ServerMessage]]:
    """What ``outbox`` holds now, in batches of at most MAX_BATCH_BYTES (drain), ends of
    stream left out."""
    while not outbox.empty():
        if (first := outbox.get_nowait()) is not None:
            yield drain(first, outbox)[0]


def _invalid_registration(r: pb.RegisterWorkerRequest) -> str:
    if not r.worker_id:
        return "worker_id is required"
    c = r.capacity
    if c.cpu_millicores <= 0 or c.memory_mb <= 0 or c.job_slots <= 0:
        return "capacity: cpu_millicores, memory_mb and job_slots must be > 0"
    if c.gpus < 0:
        return "capacity: gpus must be >= 0"
    return ""
