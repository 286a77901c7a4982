"""Failures: agents killed, servers killed and restarted, leadership lost, nodes drained.

Nothing acknowledged is lost and nothing is recorded twice.
"""

from __future__ import annotations

import signal
from dataclasses import replace

import grpc
from conftest import (
    AgentProcess,
    Gate,
    ServerProcess,
    deploy,
    final,
    free_port,
    invoke,
    logs,
    start_agent,
    wait_for,
)

from hodei.plugin.models import Status
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings
from hodei.proto import hodei_pb2 as pb
from hodei.proto import hodei_pb2_grpc as pb_grpc

ONE_SLOT = ["--cpu-millicores", "2000", "--memory-mb", "2048", "--job-slots", "1"]


async def finished_events(cp: ControlPlane, invocation_id: str) -> int:
    entries = await cp.data.redis.xrange(cp.data.keys.events)
    return sum(
        1
        for _, f in entries
        if f.get(b"type") == b"finished" and f.get(b"invocation") == invocation_id.encode()
    )


async def running_on(cp: ControlPlane, invocation_id: str, worker: str) -> bool:
    inv = await cp.data.invocations.get(invocation_id)
    return (
        inv.status is Status.RUNNING
        and inv.worker_id == worker
        and bool(await logs(cp, invocation_id))
    )


async def test_agent_killed_mid_job_runs_again_elsewhere_and_stale_result_is_rejected(
    plane: ControlPlane, agents: list[AgentProcess], gate: Gate
) -> None:
    first = await start_agent(plane, agents, "w1", *ONE_SLOT)
    fn = await deploy(
        plane,
        "work",
        command=gate.command('echo "attempt $HODEI_ATTEMPT" >&2', 'echo "done $HODEI_ATTEMPT"'),
    )
    inv_id = await invoke(plane, fn, b"")
    await wait_for(lambda: running_on(plane, inv_id, "w1"), 30)
    await start_agent(plane, agents, "w2", *ONE_SLOT)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    # Its lease runs out; attempt 2 starts on w2 (attempt 1 never got to finish).
    await wait_for(lambda: running_on(plane, inv_id, "w2"), 30)
    gate.open()

    inv = await final(plane, inv_id, 30)
    assert inv.status is Status.SUCCEEDED
    assert inv.attempt == 2 and inv.worker_id == "w2"
    assert (await plane.data.invocations.result(inv_id))[1] == b"done 2\n"

    # The dead worker comes back (same id) and reports attempt 1's result, late.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        stub = pb_grpc.WorkerServiceStub(channel)
        status = await stub.RegisterWorker(
            pb.RegisterWorkerRequest(
                worker_id="w1",
                capacity=pb.Resources(cpu_millicores=1000, memory_mb=512, job_slots=1),
                runtimes=["process"],
                running_jobs=[pb.RunningJob(invocation_id=inv_id, attempt=1)],
            )
        )
        assert [j.invocation_id for j in status.revoked_jobs] == [inv_id]
        call = stub.JobStream()
        await call.write(
            pb.AgentMessage(status=pb.WorkerStatus(worker_id="w1", session_id=status.session_id))
        )
        await call.write(
            pb.AgentMessage(
                result=pb.JobResult(
                    invocation_id=inv_id,
                    attempt=1,
                    outcome=pb.JOB_OUTCOME_SUCCEEDED,
                    output=b"late result of attempt 1",
                )
            )
        )
        reply = await call.read()
        assert reply.ack.invocation_id == inv_id and not reply.ack.recorded
        assert reply.ack.reason in ("not_running", "stale_attempt")
        await call.done_writing()

    assert (await plane.data.invocations.result(inv_id))[1] == b"done 2\n"
    assert await finished_events(plane, inv_id) == 1
    h = await plane.data.workers.get("w2")
    assert h is not None and h.used.slots == 0


async def test_server_killed_and_restarted_records_results_finished_meanwhile(
    settings: ServerSettings, servers: list[ServerProcess], gate: Gate
) -> None:
    port = free_port()
    server = ServerProcess(settings, port, "s1")
    servers.append(server)
    server.start()
    view = ControlPlane(settings)  # only its store and registry, to look at Redis
    agent = AgentProcess(port, "w1", *ONE_SLOT)
    try:
        await wait_for(lambda: view.data.workers.get("w1"), 15)
        fn = await deploy(
            view,
            "outlive",
            command=gate.command("echo begin >&2", 'echo "survived $HODEI_ATTEMPT"'),
        )
        inv_id = await invoke(view, fn, b"")
        await wait_for(lambda: running_on(view, inv_id, "w1"), 30)
        server.kill()
        gate.open()  # the job ends while no server is there
        await wait_for(
            lambda: f"invocation {inv_id} attempt 1 ended succeeded" in agent.output(), 30
        )
        assert (await view.data.invocations.get(inv_id)).status is Status.RUNNING
        server.start()
        inv = await final(view, inv_id, 20)
        assert inv.status is Status.SUCCEEDED and inv.attempt == 1
        assert (await view.data.invocations.result(inv_id))[1] == b"survived 1\n"
        assert await finished_events(view, inv_id) == 1
        # And the reconnected agent takes new work.
        again = await invoke(view, fn, b"")
        assert (await final(view, again, 20)).status is Status.SUCCEEDED
    finally:
        await agent.stop()
        await view.data.close()


async def test_leader_dies_standby_takes_over_and_remote_delivery_works(
    settings: ServerSettings, servers: list[ServerProcess]
) -> None:
    leader_port, standby_port = free_port(), free_port()
    leader = ServerProcess(settings, leader_port, "leader")
    standby = ServerProcess(settings, standby_port, "standby")
    servers += [leader, standby]
    leader.start()
    view = ControlPlane(settings)

    async def led_by(server_id: str) -> bool:
        value = await view.data.redis.get(view.data.keys.leader)
        return bool(value and value.decode().startswith(server_id + "#"))  # the process's id

    await wait_for(lambda: led_by("leader"), 10)
    standby.start()
    # The agent is connected to the standby: the leader's assignments reach it through the
    # standby's delivery channel.
    agent = AgentProcess(standby_port, "w1", *ONE_SLOT)
    try:
        await wait_for(lambda: view.data.workers.get("w1"), 15)
        fn = await deploy(view, "hop", command=["sh", "-c", 'echo "hop $HODEI_ATTEMPT"'])
        first = await invoke(view, fn, b"")
        assert (await final(view, first, 15)).status is Status.SUCCEEDED
        leader.kill()
        queued = [await invoke(view, fn, b"") for _ in range(3)]
        await wait_for(lambda: led_by("standby"), 10)
        for inv_id in queued:
            inv = await final(view, inv_id, 20)
            assert inv.status is Status.SUCCEEDED and inv.attempt == 1
            assert await finished_events(view, inv_id) == 1
    finally:
        await agent.stop()
        await view.data.close()


async def test_drain_finishes_running_work_takes_no_new_work_and_deregisters(
    plane: ControlPlane, agents: list[AgentProcess], gate: Gate
) -> None:
    draining = await start_agent(plane, agents, "w1", "--job-slots", "2", "--drain-grace-s", "60")
    fn = await deploy(
        plane,
        "finish-me",
        command=gate.command("echo go >&2", 'echo "finished on attempt $HODEI_ATTEMPT"'),
    )
    inv_id = await invoke(plane, fn, b"")
    await wait_for(lambda: running_on(plane, inv_id, "w1"), 30)
    draining.proc.send_signal(signal.SIGTERM)

    async def state(worker: str) -> str:
        w = await plane.data.workers.get(worker)
        return str(w.state) if w else ""

    async def is_draining() -> bool:
        return await state("w1") == "draining"

    await wait_for(is_draining, 30)
    later = await invoke(plane, fn, b"")
    gate.open()
    inv = await final(plane, inv_id, 30)
    assert inv.status is Status.SUCCEEDED and inv.attempt == 1
    await wait_for(lambda: draining.proc.poll() is not None, 30)
    assert draining.proc.returncode == 0
    assert await state("w1") == "terminated"
    # Work that arrived meanwhile waits for another worker and runs there.
    assert (await plane.data.invocations.get(later)).status is Status.QUEUED
    await start_agent(plane, agents, "w2")
    assert (await final(plane, later, 30)).worker_id == "w2"


async def test_drain_grace_over_hands_back_work_without_counting_a_failure(
    plane: ControlPlane, agents: list[AgentProcess], gate: Gate
) -> None:
    quitting = await start_agent(plane, agents, "w1", "--drain-grace-s", "0.3")
    fn = await deploy(
        plane,
        "long",
        command=gate.command("echo go >&2", 'echo "attempt $HODEI_ATTEMPT"'),
        max_retries=0,
    )
    inv_id = await invoke(plane, fn, b"")
    await wait_for(lambda: running_on(plane, inv_id, "w1"), 30)
    quitting.proc.send_signal(signal.SIGTERM)
    await wait_for(lambda: quitting.proc.poll() is not None, 30)
    assert quitting.proc.returncode == 0
    inv = await plane.data.invocations.get(inv_id)
    assert inv.status is Status.QUEUED and inv.attempt == 2 and inv.failures == 0
    gate.open()
    await start_agent(plane, agents, "w2")
    done = await final(plane, inv_id, 30)
    assert done.status is Status.SUCCEEDED and done.attempt == 2


async def worker_state(cp: ControlPlane, worker: str) -> str:
    w = await cp.data.workers.get(worker)
    return str(w.state) if w else ""


async def test_silent_worker_turns_unhealthy_gets_no_work_and_recovers(
    plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    agent = await start_agent(plane, agents, "w1")
    agent.proc.send_signal(signal.SIGSTOP)  # a frozen node: no heartbeats, stream still open
    try:

        async def unhealthy() -> bool:
            return await worker_state(plane, "w1") == "unhealthy"

        await wait_for(unhealthy, 15)
        fn = await deploy(plane, "wait", command=["sh", "-c", "echo ok"])
        inv_id = await invoke(plane, fn, b"")

        async def looked_at() -> str:
            return (await plane.data.invocations.get(inv_id)).pending_reason

        assert await wait_for(looked_at, 15) == "no schedulable workers"
        assert (await plane.data.invocations.get(inv_id)).status is Status.QUEUED
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    assert (await final(plane, inv_id, 10)).worker_id == "w1"
    assert await worker_state(plane, "w1") == "available"


async def test_worker_unhealthy_too_long_is_failed_and_must_register_again(
    settings: ServerSettings,
) -> None:
    cp = ControlPlane(replace(settings, failed_after_s=0.5))
    await cp.start()
    agent = AgentProcess(cp.port, "w1")
    try:

        async def state_is(*states: str) -> bool:
            return await worker_state(cp, "w1") in states

        await wait_for(lambda: state_is("available"), 15)
        agent.proc.send_signal(signal.SIGSTOP)
        await wait_for(lambda: state_is("failed"), 10)
        agent.proc.send_signal(signal.SIGCONT)
        # Its heartbeats are refused as stale; it registers again and is back in service.
        await wait_for(lambda: state_is("available", "running"), 10)
        fn = await deploy(cp, "again", command=["true"])
        assert (await final(cp, await invoke(cp, fn, b""), 10)).status is Status.SUCCEEDED
    finally:
        agent.proc.send_signal(signal.SIGCONT)
        await agent.stop()
        await cp.stop(0.5)
