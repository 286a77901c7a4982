"""What an operator sees: Prometheus series that move, JSON logs carrying the invocation id,
and grpc.health.v1 on the agent."""

from __future__ import annotations

import json
import re
import urllib.request

import grpc
from conftest import (
    AgentProcess,
    ServerProcess,
    deploy,
    final,
    free_port,
    invoke,
    wait_for,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hodei.plugin.models import FunctionSpec, Status
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    series = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
    return series


async def test_metrics_logs_and_health_across_processes(
    settings: ServerSettings, servers: list[ServerProcess]
) -> None:
    grpc_port, server_metrics, agent_metrics, agent_health = (free_port() for _ in range(4))
    server = ServerProcess(settings, grpc_port, "observed", metrics_port=server_metrics)
    servers.append(server)
    server.start()
    view = ControlPlane(settings)
    agent = AgentProcess(
        grpc_port,
        "w1",
        "--metrics-port",
        str(agent_metrics),
        "--health-port",
        str(agent_health),
        "--job-slots",
        "1",
    )
    try:
        await wait_for(lambda: view.data.workers.get("w1"), 15)
        ok = await deploy(view, "ok", command=["sh", "-c", "echo fine"])
        bad = await deploy(view, "bad", command=["sh", "-c", "exit 2"], max_retries=0)
        slow = await deploy(view, "slow", command=["sleep", "3"])
        blocker = await invoke(view, slow, b"")
        queued = [await invoke(view, ok, b"") for _ in range(3)]

        async def queue_seen() -> bool:
            return (
                scrape(server_metrics).get('hodei_scheduler_queue_size{priority="normal"}', 0) >= 2
            )

        await wait_for(queue_seen, 10)
        failed = await invoke(view, bad, b"")
        # A one-off job: its name is its caller's choice, so it never names a series.
        job = FunctionSpec.from_dict("card-7f3a", {"command": ["true"]})
        revision = await view.data.functions.store_revision(job)
        one_off = (await view.data.invocations.enqueue(job.name, b"", job_revision=revision)).id
        for inv_id in [blocker, *queued, one_off]:
            assert (await final(view, inv_id)).status is Status.SUCCEEDED
        assert (await final(view, failed)).status is Status.FAILED

        async def settled() -> dict[str, float] | None:
            m = scrape(server_metrics)
            drained = m.get('hodei_scheduler_queue_size{priority="normal"}') == 0
            idle = m.get('hodei_workers{state="available"}') == 1
            return m if drained and idle else None

        m = await wait_for(settled, 10)
        assert m['hodei_invocations_total{function="ok",status="succeeded"}'] == 3
        assert m['hodei_invocations_total{function="bad",status="failed"}'] == 1
        assert m['hodei_invocations_total{function="(job)",status="succeeded"}'] == 1
        beats = m['hodei_worker_heartbeats_total{worker="w1"}']
        assert beats > 0 and 'hodei_worker_cpu_usage_percent{worker="w1"}' in m
        assert m["hodei_scheduler_leader"] == 1 and m["hodei_grpc_streams"] == 1
        assert m["hodei_scheduling_latency_seconds_count"] >= 5
        await wait_for(
            lambda: scrape(server_metrics)['hodei_worker_heartbeats_total{worker="w1"}'] > beats, 5
        )

        a = scrape(agent_metrics)
        assert (
            a['hodei_job_execution_duration_seconds_count{function="ok",status="succeeded"}'] == 3
        )
        assert a['hodei_job_execution_duration_seconds_count{function="bad",status="failed"}'] == 1
        assert (
            a['hodei_job_execution_duration_seconds_count{function="(job)",status="succeeded"}']
            == 1
        )
        assert not [name for name in (*m, *a) if job.name in name]
        assert a['hodei_worker_heartbeats_total{worker="w1"}'] > 0
        assert 'hodei_worker_cpu_usage_percent{worker="w1"}' in a

        async with grpc.aio.insecure_channel(f"127.0.0.1:{agent_health}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="")
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        # One invocation, followed by its id through both processes' JSON logs.
        for text in (server.log_path.read_text(), agent.output()):
            entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
            mine = [e for e in entries if e.get("invocation_id") == failed]
            assert mine, "no log line carries the invocation id"
            assert all({"ts", "level", "component", "message"} <= set(e) for e in mine)
            assert all(failed in e["message"] for e in mine)
        assert not [
            line
            for line in agent.output().splitlines()
            if line.strip() and not re.match(r"^\{", line)
        ]
    finally:
        await agent.stop()
        await view.data.close()
