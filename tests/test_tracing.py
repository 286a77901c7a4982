"""One invocation followed through every process: gateway, server and agent as OS
processes exporting OpenTelemetry spans to an in-process OTLP collector, their metrics
scraped, their JSON logs read, the domain events streamed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import ROOT, AgentProcess, free_port, wait_for
from otlp_double import running_collector
from test_gateway import _sse
from test_observability import scrape

from hodei.logs import render_human

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CALLER_TRACE, CALLER_SPAN = CALLER.split("-")[1:3]


class Spawned:
    def __init__(self, name: str, args: list[str], env: dict[str, str], tmp: Path) -> None:
        self.log_path = tmp / f"{name}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("HODEI_", "OTEL_"))}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hodei.cli", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environ | env,
                cwd=ROOT,
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def entries(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.fixture
def spawned() -> Iterator[list[Spawned]]:
    started: list[Spawned] = []
    yield started
    for process in reversed(started):
        process.stop()


async def test_one_invocation_through_every_process(
    redis_url: str, tmp_path: Path, spawned: list[Spawned]
) -> None:
    async with running_collector() as collector:
        otel = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "HODEI_REDIS_URL": redis_url,
        }
        grpc_port, server_metrics, agent_metrics, http_port = (free_port() for _ in range(4))
        common = ["--heartbeat-interval-s", "0.2"]
        spawned.append(
            Spawned(
                "server",
                [
                    "server",
                    "--grpc-port",
                    str(grpc_port),
                    "--metrics-port",
                    str(server_metrics),
                    "--gauge-interval-s",
                    "0.2",
                    *common,
                ],
                otel,
                tmp_path,
            )
        )
        agent = AgentProcess(
            grpc_port,
            "w1",
            "--metrics-port",
            str(agent_metrics),
            "--runtimes",
            "process",
            "--job-slots",
            "1",
            env={k: v for k, v in otel.items() if k.startswith("OTEL")},
        )
        spawned.append(Spawned("gateway", ["gateway", "--port", str(http_port)], otel, tmp_path))
        url = f"http://127.0.0.1:{http_port}"
        try:
            async with aiohttp.ClientSession(url) as http:

                async def ready() -> bool:
                    try:
                        async with http.get("/v1/workers") as r:
                            return r.status == 200 and bool((await r.json())["workers"])
                    except aiohttp.ClientError:
                        return False

                await wait_for(ready, 20)
                spec = {"command": ["sh", "-c", 'echo "$TRACEPARENT"; echo working >&2']}
                async with http.put("/v1/functions/traced", json=spec) as r:
                    assert r.status == 201
                async with http.put(
                    "/v1/functions/broken", json={"command": ["false"], "max_retries": 0}
                ) as r:
                    assert r.status == 201
                async with http.post(
                    "/v1/functions/traced/invoke?async=true", headers={"traceparent": CALLER}
                ) as r:
                    assert r.status == 202
                    inv_id = (await r.json())["id"]
                events_url = f"/v1/events?invocation={inv_id}&since=0-0"
                async with http.get(events_url) as r:
                    lifecycle = await _sse(r, until="finished")
                assert [e["event"] for e in lifecycle] == [
                    "queued",
                    "assigned",
                    "started",
                    "log",
                    "finished",
                ]
                async with http.get("/v1/events?worker=w1&since=0-0") as r:
                    worker_events = await _sse(r, until="assigned")
                assert worker_events[0]["event"] == "worker"  # its registration
                assert all(e["data"]["worker"] == "w1" for e in worker_events)

                async with http.get(f"/v1/invocations/{inv_id}/result") as r:
                    # The function saw the caller's traceparent.
                    assert (await r.read()).decode().strip() == CALLER
                async with http.get(f"/v1/invocations/{inv_id}") as r:
                    record = await r.json()
                assert record["status"] == "succeeded" and record["trace_id"] == CALLER_TRACE

                async with http.post("/v1/functions/broken/invoke") as r:
                    assert r.status == 500
                    broken_id = r.headers["X-Hodei-Invocation-Id"]
                async with http.get(f"/v1/invocations/{broken_id}") as r:
                    created = (await r.json())["trace_id"]
                assert created and created != CALLER_TRACE  # made at the gateway

                # Metrics of all three processes moved, with their labels.
                async with http.get("/metrics") as r:
                    gateway_text = await r.text()
                assert (
                    'hodei_gateway_invocations_total{function="traced",status="accepted"} 1.0'
                    in gateway_text
                )

                def server_settled() -> dict[str, float] | None:
                    m = scrape(server_metrics)
                    done = m.get('hodei_invocations_total{function="broken",status="failed"}')
                    return m if done == 1 else None

                m = await wait_for(server_settled, 10)
                assert m['hodei_invocations_total{function="traced",status="succeeded"}'] == 1
                assert m["hodei_queue_wait_seconds_count"] == 2
                assert m["hodei_dead_letters"] >= 0 and m["hodei_grpc_streams"] == 1
                a = scrape(agent_metrics)
                duration = "hodei_job_execution_duration_seconds_count"
                assert a[f'{duration}{{function="traced",status="succeeded"}}'] == 1

                # Spans from the three services, all in the caller's trace.
                def spans_in() -> list[Any] | None:
                    mine = [s for s in collector.spans if s.trace_id == CALLER_TRACE]
                    names = {s.name for s in mine}
                    return (
                        mine if {"submit", "queue wait", "schedule", "execute"} <= names else None
                    )

                mine = await wait_for(spans_in, 15)
                by_name = {s.name: s for s in mine}
                assert by_name["submit"].service == "hodei-gateway"
                assert (
                    by_name["queue wait"].service == by_name["schedule"].service == "hodei-server"
                )
                assert by_name["execute"].service == "hodei-agent"
                assert all(s.parent_span_id == CALLER_SPAN for s in mine)
                assert all(s.attributes.get("hodei.invocation_id") == inv_id for s in mine)
                assert by_name["queue wait"].end_ns <= by_name["schedule"].end_ns
                assert by_name["schedule"].start_ns <= by_name["execute"].start_ns
                assert not by_name["execute"].error

                def failed_execute() -> bool:
                    return any(
                        s.name == "execute" and s.trace_id == created and s.error
                        for s in collector.spans
                    )

                await wait_for(failed_execute, 15)
        finally:
            await agent.stop()
            for process in spawned:
                process.stop()

    # The invocation id is in the JSON logs of the gateway, the server and the agent.
    agent_entries = [json.loads(x) for x in agent.output().splitlines() if x.startswith("{")]
    by_process = {
        "gateway": spawned[1].entries(),
        "server": spawned[0].entries(),
        "agent": agent_entries,
    }
    for process, entries in by_process.items():
        mine = [e for e in entries if e.get("invocation_id") == inv_id]
        assert mine, f"{process}: no log line carries the invocation id"
        assert all({"ts", "level", "component", "message"} <= set(e) for e in mine)
        assert all(e["component"] == process for e in mine)
    assert any(
        e.get("worker_id") == "w1" for e in by_process["server"] if e.get("invocation_id") == inv_id
    )
    assert any("attempt" in e for e in agent_entries if e.get("invocation_id") == inv_id)
    line = render_human(next(e for e in agent_entries if e.get("invocation_id") == inv_id))
    assert f"invocation_id={inv_id}" in line and " agent " in line
