"""The WorkerService contract against a real grpc.aio server on 127.0.0.1:0: every RPC,
authentication, and bad input that must be refused clearly without hurting the server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc
import pytest
from conftest import (
    AgentProcess,
    deploy,
    invoke,
    logs,
    wait_for,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hodei.plugin import servicer
from hodei.plugin.agent_identity import foreign_worker
from hodei.plugin.models import Status
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings
from hodei.proto import hodei_pb2 as pb
from hodei.proto import hodei_pb2_grpc as pb_grpc

TOKEN = "s3cret-agent-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)  # the agent of worker "fake"
GHOST = (("authorization", "Bearer ghost-token"),)  # of worker "ghost", never registered
OPERATOR = (("authorization", "Bearer operator-token"),)
CAPACITY = pb.Resources(cpu_millicores=2000, memory_mb=2048, job_slots=2)


@pytest.fixture
async def secured(settings: ServerSettings) -> AsyncIterator[ControlPlane]:
    cp = ControlPlane(
        replace(
            settings,
            agent_tokens=(f"{TOKEN}:fake", "ghost-token:ghost"),
            operator_tokens=("operator-token",),
        )
    )
    await cp.start()
    await wait_for(lambda: cp.leader.is_leader, 5)
    yield cp
    await cp.stop(0.5)


@pytest.fixture
async def stub(secured: ControlPlane) -> AsyncIterator[pb_grpc.WorkerServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secured.port}") as channel:
        yield pb_grpc.WorkerServiceStub(channel)


def registration(worker_id: str = "fake", **changes: object) -> pb.RegisterWorkerRequest:
    request = pb.RegisterWorkerRequest(
        worker_id=worker_id, capacity=CAPACITY, runtimes=["process"], labels={"zone": "a"}
    )
    for key, value in changes.items():
        if key == "capacity":
            request.capacity.CopyFrom(value)  # type: ignore[arg-type]
        elif key == "runtimes":
            del request.runtimes[:]
        else:
            setattr(request, key, value)
    return request


async def connect(stub: pb_grpc.WorkerServiceStub, worker_id: str = "fake"):  # type: ignore[no-untyped-def]
    status = await stub.RegisterWorker(registration(worker_id), metadata=AUTH)
    call = stub.JobStream(metadata=AUTH)
    await call.write(
        pb.AgentMessage(status=pb.WorkerStatus(worker_id=worker_id, session_id=status.session_id))
    )
    return status, call


async def code_of(awaitable: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable  # type: ignore[misc]
    return info.value.code()


async def test_health_service_is_served(secured: ControlPlane) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secured.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "hodei.v1.WorkerService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_token_is_required(stub: pb_grpc.WorkerServiceStub) -> None:
    assert await code_of(stub.RegisterWorker(registration())) == grpc.StatusCode.UNAUTHENTICATED
    bad = (("authorization", "Bearer nope"),)
    assert await code_of(stub.RegisterWorker(registration(), metadata=bad)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert await code_of(stub.GetWorkerStatus(pb.GetWorkerStatusRequest(worker_id="x"))) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    call = stub.JobStream()
    await call.write(pb.AgentMessage(status=pb.WorkerStatus(worker_id="x")))
    assert await code_of(call.read()) == grpc.StatusCode.UNAUTHENTICATED


async def test_agent_process_without_token_fails_and_exits(secured: ControlPlane) -> None:
    agent = AgentProcess(secured.port, "tokenless")
    await wait_for(lambda: agent.proc.poll() is not None, 15)
    assert agent.proc.returncode == 1
    assert "UNAUTHENTICATED" in agent.output()
    await agent.stop()
    assert await secured.data.workers.get("tokenless") is None


@pytest.mark.parametrize(
    "changes",
    [
        {"capacity": pb.Resources(cpu_millicores=0, memory_mb=1024, job_slots=1)},
        {"capacity": pb.Resources(cpu_millicores=1000, memory_mb=-5, job_slots=1)},
        {"capacity": pb.Resources(cpu_millicores=1000, memory_mb=1024, job_slots=0)},
        {"capacity": pb.Resources(cpu_millicores=1000, memory_mb=1024, job_slots=1, gpus=-1)},
        {"worker_id": ""},
    ],
)
async def test_invalid_registration_is_refused(
    stub: pb_grpc.WorkerServiceStub, changes: dict[str, object]
) -> None:
    code = await code_of(stub.RegisterWorker(registration(**changes), metadata=AUTH))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_stream_must_open_with_a_current_session(
    stub: pb_grpc.WorkerServiceStub, secured: ControlPlane
) -> None:
    call = stub.JobStream(metadata=AUTH)
    await call.write(pb.AgentMessage(heartbeat=pb.Heartbeat(worker_id="fake")))
    assert await code_of(call.read()) == grpc.StatusCode.FAILED_PRECONDITION

    call = stub.JobStream(metadata=GHOST)
    await call.write(pb.AgentMessage(status=pb.WorkerStatus(worker_id="ghost", session_id="s")))
    assert await code_of(call.read()) == grpc.StatusCode.NOT_FOUND

    old = await stub.RegisterWorker(registration(), metadata=AUTH)
    await stub.RegisterWorker(registration(), metadata=AUTH)  # a newer session
    call = stub.JobStream(metadata=AUTH)
    await call.write(
        pb.AgentMessage(status=pb.WorkerStatus(worker_id="fake", session_id=old.session_id))
    )
    assert await code_of(call.read()) == grpc.StatusCode.FAILED_PRECONDITION
    fake = await secured.data.workers.get("fake")
    assert fake is not None and fake.state == "registering"


async def test_unknown_jobs_on_the_stream_are_answered_not_fatal(
    stub: pb_grpc.WorkerServiceStub, secured: ControlPlane
) -> None:
    _, call = await connect(stub)
    await call.write(
        pb.AgentMessage(
            log=pb.LogEntry(invocation_id="nope", attempt=1, lines=[pb.LogLine(line="x")])
        )
    )
    await call.write(pb.AgentMessage(accepted=pb.JobAccepted(invocation_id="nope", attempt=1)))
    reply = await call.read()
    assert reply.cancel.invocation_id == "nope" and reply.cancel.reason == "unknown job"
    await call.write(
        pb.AgentMessage(
            result=pb.JobResult(invocation_id="nope", attempt=1, outcome=pb.JOB_OUTCOME_SUCCEEDED)
        )
    )
    reply = await call.read()
    assert reply.ack.invocation_id == "nope" and not reply.ack.recorded
    assert reply.ack.reason == "unknown"
    assert await logs(secured, "nope") == []
    # A result without an outcome is malformed: the stream is refused, the server stays up.
    await call.write(pb.AgentMessage(result=pb.JobResult(invocation_id="nope", attempt=1)))
    assert await code_of(call.read()) == grpc.StatusCode.INVALID_ARGUMENT
    status, again = await connect(stub)
    assert status.session_id
    await again.done_writing()


async def test_reports_that_arrive_during_a_round_trip_share_the_next(
    stub: pb_grpc.WorkerServiceStub, secured: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results that arrive while one is being recorded are recorded together, in the next
    round trip, and each is answered in order."""
    gate = asyncio.Event()
    sizes: list[int] = []
    report = secured.data.leases.report

    async def held(accepted: Any = (), logs: Any = (), ends: Any = ()) -> Any:
        sizes.append(len(ends))
        await gate.wait()
        return await report(accepted, logs, ends)

    monkeypatch.setattr(secured.data.leases, "report", held)
    _, call = await connect(stub)
    ids = [f"nope-{i}" for i in range(40)]
    for invocation_id in ids:
        await call.write(
            pb.AgentMessage(
                result=pb.JobResult(
                    invocation_id=invocation_id, attempt=1, outcome=pb.JOB_OUTCOME_SUCCEEDED
                )
            )
        )
    await wait_for(lambda: sizes, 10)  # the first one is being recorded
    gate.set()
    acks: list[str] = []
    while len(acks) < len(ids):
        reply = await asyncio.wait_for(call.read(), 10)
        acks += [m.ack.invocation_id for m in reply.batch.messages] or [reply.ack.invocation_id]
    assert acks == ids
    assert sum(sizes) == len(ids) and len(sizes) < 10, sizes
    await call.done_writing()


async def test_empty_message_is_malformed(stub: pb_grpc.WorkerServiceStub) -> None:
    _, call = await connect(stub)
    await call.write(pb.AgentMessage())
    assert await code_of(call.read()) == grpc.StatusCode.INVALID_ARGUMENT


async def test_terminating_with_leases_is_out_of_order(
    stub: pb_grpc.WorkerServiceStub, secured: ControlPlane
) -> None:
    _, call = await connect(stub)
    fn = await deploy(secured, "hold", command=["true"])
    inv_id = await invoke(secured, fn, b"")
    assigned = await call.read()
    assert assigned.assign.invocation_id == inv_id
    await call.write(
        pb.AgentMessage(status=pb.WorkerStatus(worker_id="fake", state=pb.WORKER_STATE_TERMINATED))
    )
    assert await code_of(call.read()) == grpc.StatusCode.INVALID_ARGUMENT


async def test_unary_heartbeat_renews_leases_and_knows_sessions(
    stub: pb_grpc.WorkerServiceStub, secured: ControlPlane
) -> None:
    status, call = await connect(stub)
    fn = await deploy(secured, "beat", command=["true"])
    inv_id = await invoke(secured, fn, b"")
    assert (await call.read()).assign.invocation_id == inv_id
    before = await secured.data.redis.zscore(secured.data.keys.leases, inv_id)
    await asyncio.sleep(0.05)
    beat = pb.Heartbeat(
        worker_id="fake",
        session_id=status.session_id,
        cpu_usage_percent=12.5,
        running_jobs=[pb.RunningJob(invocation_id=inv_id, attempt=1)],
    )
    await stub.Heartbeat(beat, metadata=AUTH)
    assert await secured.data.redis.zscore(secured.data.keys.leases, inv_id) > before
    fake = await secured.data.workers.get("fake")
    assert fake is not None and fake.cpu_percent == 12.5
    stale = pb.Heartbeat(worker_id="fake", session_id="old")
    assert await code_of(stub.Heartbeat(stale, metadata=AUTH)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    ghost = pb.Heartbeat(worker_id="ghost", session_id="x")
    assert await code_of(stub.Heartbeat(ghost, metadata=GHOST)) == grpc.StatusCode.NOT_FOUND


async def test_in_stream_heartbeat_revokes_jobs_the_worker_no_longer_holds(
    stub: pb_grpc.WorkerServiceStub,
) -> None:
    status, call = await connect(stub)
    await call.write(
        pb.AgentMessage(
            heartbeat=pb.Heartbeat(
                worker_id="fake",
                session_id=status.session_id,
                running_jobs=[pb.RunningJob(invocation_id="stolen", attempt=3)],
            )
        )
    )
    reply = await call.read()
    assert reply.cancel.invocation_id == "stolen" and reply.cancel.attempt == 3


async def test_get_worker_status(stub: pb_grpc.WorkerServiceStub, secured: ControlPlane) -> None:
    assert (
        await code_of(
            stub.GetWorkerStatus(pb.GetWorkerStatusRequest(worker_id="ghost"), metadata=OPERATOR)
        )
        == grpc.StatusCode.NOT_FOUND
    )
    _, call = await connect(stub)
    fn = await deploy(
        secured, "st", command=["true"], resources={"cpu_millicores": 500, "memory_mb": 256}
    )
    inv_id = await invoke(secured, fn, b"")
    assert (await call.read()).assign.invocation_id == inv_id
    status = await stub.GetWorkerStatus(pb.GetWorkerStatusRequest(worker_id="fake"), metadata=AUTH)
    assert status.state == pb.WORKER_STATE_RUNNING
    assert status.capacity.cpu_millicores == 2000
    assert status.allocated.cpu_millicores == 500 and status.allocated.job_slots == 1
    assert [(j.invocation_id, j.attempt) for j in status.jobs] == [(inv_id, 1)]


async def test_assign_job_pins_an_invocation_on_a_worker(
    stub: pb_grpc.WorkerServiceStub, secured: ControlPlane
) -> None:
    # Park the scheduler: no worker fits this function, except through pinning.
    fn = await deploy(secured, "pinned", command=["true"], labels={"zone": "b"})
    inv_id = await invoke(secured, fn, b"payload")
    _, call = await connect(stub)

    async def available() -> bool:  # the server has opened the stream's session
        h = await secured.data.workers.get("fake")
        return bool(h and h.state == "available")

    await wait_for(available, 5)

    async def agent_side() -> None:
        message = await call.read()
        assert message.assign.invocation_id == inv_id and message.assign.payload == b"payload"
        await call.write(
            pb.AgentMessage(
                accepted=pb.JobAccepted(
                    invocation_id=inv_id, attempt=message.assign.attempt, worker_id="fake"
                )
            )
        )

    accepting = asyncio.create_task(agent_side())
    accepted = await stub.AssignJob(
        pb.AssignJobRequest(invocation_id=inv_id, worker_id="fake"), metadata=OPERATOR
    )
    await accepting
    assert accepted.invocation_id == inv_id and accepted.worker_id == "fake"
    inv = await secured.data.invocations.get(inv_id)
    assert inv.status is Status.RUNNING and inv.worker_id == "fake"
    again = pb.AssignJobRequest(invocation_id=inv_id, worker_id="fake")
    assert await code_of(stub.AssignJob(again, metadata=OPERATOR)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    missing = pb.AssignJobRequest(invocation_id="nope", worker_id="fake")
    assert await code_of(stub.AssignJob(missing, metadata=OPERATOR)) == grpc.StatusCode.NOT_FOUND
    big = await deploy(
        secured,
        "huge",
        command=["true"],
        labels={"zone": "b"},
        resources={"cpu_millicores": 99000, "memory_mb": 1},
    )
    big_id = await invoke(secured, big, b"")
    too_big = pb.AssignJobRequest(invocation_id=big_id, worker_id="fake")
    assert await code_of(stub.AssignJob(too_big, metadata=OPERATOR)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )


async def test_a_stream_that_opens_while_the_server_stops_ends_with_the_others(
    settings: ServerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping ends every stream at once, so that agents move to another server: one that
    was still opening (its session being recorded) when the stop began too, not after the
    whole grace period."""
    cp = ControlPlane(replace(settings, agent_tokens=(f"{TOKEN}:fake",)))
    await cp.start()
    opening, go_on = asyncio.Event(), asyncio.Event()
    transition = cp.data.workers.transition

    async def held_transition(*args: Any, **kwargs: Any) -> Any:
        opening.set()
        await go_on.wait()
        return await transition(*args, **kwargs)

    closed = asyncio.Event()
    stop_sessions = cp.sessions.stop

    def stop_then_tell() -> None:
        stop_sessions()
        closed.set()

    monkeypatch.setattr(cp.data.workers, "transition", held_transition)
    monkeypatch.setattr(cp.sessions, "stop", stop_then_tell)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}") as channel:
        _, call = await connect(pb_grpc.WorkerServiceStub(channel))
        await asyncio.wait_for(opening.wait(), 10)
        stopping = asyncio.create_task(cp.stop(grace_s=60))
        await asyncio.wait_for(closed.wait(), 10)
        go_on.set()
        # Not ended with the others, the stream stayed open for the whole grace period.
        await asyncio.wait_for(stopping, 20)
        while await call.read() != grpc.aio.EOF:
            pass


async def test_a_stopping_server_refuses_new_streams_before_taking_the_worker(
    stub: pb_grpc.WorkerServiceStub, secured: ControlPlane
) -> None:
    """A review: a stream that opened during the stop made its worker available (so the
    leader could lease it work through this server's inbox) before it ended."""
    secured.sessions.stop()
    _, call = await connect(stub)
    assert await code_of(call.read()) == grpc.StatusCode.UNAVAILABLE
    fake = await secured.data.workers.get("fake")
    assert fake is not None and fake.state == "registering"


async def test_a_stream_that_has_not_spoken_yet_does_not_hold_the_stop(
    settings: ServerSettings,
) -> None:
    """Stopping with a stream open that has not sent its first message (an agent that
    opened it as it began to stop): the server waited for that message for its whole
    grace."""
    cp = ControlPlane(replace(settings, agent_tokens=(f"{TOKEN}:fake",)))
    await cp.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}") as channel:
        stub = pb_grpc.WorkerServiceStub(channel)
        await stub.RegisterWorker(registration(), metadata=AUTH)
        call = stub.JobStream(metadata=AUTH)
        await call.wait_for_connection()
        await asyncio.wait_for(cp.stop(grace_s=60), 20)
        assert await code_of(call.read()) == grpc.StatusCode.UNAVAILABLE


async def test_results_received_before_the_server_stops_are_acknowledged(
    settings: ServerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop ends the streams, but the results an agent sent before it are recorded and
    answered first, the one being recorded and the one behind it: without their answers, a
    draining agent whose server stopped for good waited out its whole drain budget (38 s in
    a test that failed under load), and an agent moving to another server sent them again."""
    cp = ControlPlane(replace(settings, agent_tokens=(f"{TOKEN}:fake",)))
    await cp.start()
    recording, go_on = asyncio.Event(), asyncio.Event()
    report = cp.data.leases.report

    async def held(accepted: Any = (), logs: Any = (), ends: Any = ()) -> Any:
        if ends and not recording.is_set():
            recording.set()
            await go_on.wait()
        return await report(accepted, logs, ends)

    received: list[str] = []

    def seen(message: pb.AgentMessage, worker_id: str) -> str:
        received.append(message.result.invocation_id)
        return foreign_worker(message, worker_id)

    monkeypatch.setattr(cp.data.leases, "report", held)
    monkeypatch.setattr(servicer, "foreign_worker", seen)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}") as channel:
        _, call = await connect(pb_grpc.WorkerServiceStub(channel))
        for invocation_id in ("first", "second"):
            result = pb.JobResult(
                invocation_id=invocation_id, attempt=1, outcome=pb.JOB_OUTCOME_SUCCEEDED
            )
            await call.write(pb.AgentMessage(result=result))
            await asyncio.wait_for(recording.wait(), 10)  # the first one is being recorded
        await wait_for(lambda: "second" in received, 10)
        stopping = asyncio.create_task(cp.stop(grace_s=60))
        await asyncio.wait_for(cp.sessions.stopping.wait(), 10)  # the streams are told to end
        go_on.set()
        acks = []
        while (reply := await asyncio.wait_for(call.read(), 20)) != grpc.aio.EOF:
            acks += [m.ack.invocation_id for m in reply.batch.messages] or [reply.ack.invocation_id]
        assert acks == ["first", "second"]
        await asyncio.wait_for(stopping, 20)
