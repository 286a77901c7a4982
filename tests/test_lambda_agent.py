"""The lambda pool wired into the agent: assignments and pre-warm requests as the stream
delivers them, pools in heartbeats, results with cold starts, room made for stdio jobs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import STATE_DIR, wait_for

from hodei.agent.agent import Agent
from hodei.agent.process_runtime import ProcessRuntime
from hodei.agent.settings import AgentSettings
from hodei.proto import hodei_pb2 as pb

CODE = Path(__file__).parent / "lambda_functions"


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    settings = AgentSettings(
        server="127.0.0.1:1",  # never connected: results wait in the unacknowledged buffer
        worker_id="lambda-wiring",
        state_dir=str(STATE_DIR),
        runtimes=("process",),
        memory_mb=1000,
        metrics_port=-1,
        health_port=-1,
    )
    agent = Agent(settings)
    yield agent
    await agent.instances.close()
    await agent.connection.close()
    process = agent.runtimes["process"]
    assert isinstance(process, ProcessRuntime)
    await process.sandbox.close()


def lambda_job(code: Path, invocation_id: str, memory_mb: int = 400) -> pb.AssignJobRequest:
    return pb.AssignJobRequest(
        invocation_id=invocation_id,
        attempt=1,
        function="echo",
        runtime="process",
        interface="lambda",
        handler="echo.handler",
        revision="r1",
        timeout_s=20,
        env={"PYTHONPATH": str(code)},
        resources=pb.Resources(memory_mb=memory_mb),
        payload=b'{"hi": 1}',
    )


async def result_of(agent: Agent, invocation_id: str) -> pb.JobResult:
    await wait_for(lambda: (invocation_id, 1) in agent.connection.unacked, 30)
    return agent.connection.unacked[(invocation_id, 1)]


async def test_assignments_prewarm_and_heartbeat_pools(agent: Agent) -> None:
    await agent._on_assign(lambda_job(CODE, "a1"))
    first = await result_of(agent, "a1")
    assert first.outcome == pb.JOB_OUTCOME_SUCCEEDED and first.cold_start and first.init_ms > 0
    assert json.loads(first.output) == {"echo": {"hi": 1}}
    await agent._on_assign(lambda_job(CODE, "a2"))
    assert not (await result_of(agent, "a2")).cold_start

    # A pre-warm request as the stream delivers it.
    template = lambda_job(CODE, "")
    template.ClearField("payload")
    await agent.connection._dispatch(
        pb.ServerMessage(prewarm=pb.PrewarmRequest(function=template, count=2))
    )
    await wait_for(
        lambda: [(p.idle, p.busy, p.starting) for p in agent.instances.pools()] == [(2, 0, 0)], 20
    )
    (pool,) = agent.instances.pools()
    assert (pool.function, pool.revision, pool.resources.memory_mb) == ("echo", "r1", 400)

    # Heartbeats carry the pools (the beat goes out by the unary RPC, which fails here,
    # so look at what the agent builds).
    sent: list[pb.Heartbeat] = []

    async def capture(beat: pb.Heartbeat) -> bool:
        sent.append(beat)
        return False

    agent.connection.heartbeat = capture  # type: ignore[method-assign]
    beats = asyncio.create_task(agent._heartbeats())
    agent.beat_now.set()
    await wait_for(lambda: sent, 10)
    beats.cancel()
    assert [(p.function, p.idle) for p in sent[0].pools] == [("echo", 2)]

    # A stdio job needing 400 MB of the 1000 (800 held by two idle instances): one goes.
    await agent._on_assign(
        pb.AssignJobRequest(
            invocation_id="stdio",
            attempt=1,
            function="cat",
            runtime="process",
            command=["true"],
            resources=pb.Resources(memory_mb=400),
        )
    )
    await wait_for(lambda: [p.idle for p in agent.instances.pools()] == [1], 10)
    stdio = await result_of(agent, "stdio")
    assert stdio.outcome == pb.JOB_OUTCOME_SUCCEEDED
    assert not stdio.HasField("cold_start")  # not a lambda: neither cold nor warm
    assert (await result_of(agent, "a2")).HasField("cold_start")  # warm: false, and said
