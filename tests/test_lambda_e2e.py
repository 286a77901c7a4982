"""Lambda functions through the whole stack: a real control plane (in-process) assigns
invocations to an agent (its own OS process) whose instances run the real awslambdaric."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import AgentProcess, deploy, final, invoke, logs, start_agent, wait_for

from hodei.plugin.models import Status
from hodei.plugin.server import ControlPlane

AGENT = ["--runtimes", "process", "--memory-mb", "4096", "--job-slots", "8"]


@pytest.fixture
def code() -> Path:
    # A folder of the project: readable by a sandboxed function's uid.
    return Path(__file__).parent / "lambda_functions"


def spec(code: Path, **extra: Any) -> dict[str, Any]:
    return {
        "runtime": "process",
        "interface": "lambda",
        "handler": "counter.handler",
        "command": [sys.executable, "-m", "awslambdaric", "counter.handler"],
        "env": {"PYTHONPATH": str(code)},
        "resources": {"memory_mb": 256},
        "timeout_s": 20,
        "max_retries": 0,
        **extra,
    }


async def test_warm_invocations_through_the_control_plane(
    plane: ControlPlane, agents: list[AgentProcess], code: Path
) -> None:
    await start_agent(plane, agents, "lambda-e2e", *AGENT)
    fn = await deploy(plane, "warm", **spec(code))
    first_id = await invoke(plane, fn, b'{"n": 1}')
    first = await final(plane, first_id, 30)
    assert first.status is Status.SUCCEEDED, first.error
    assert first.cold_start is True and (first.init_ms or 0) > 0
    _, output = await plane.data.invocations.result(first_id)
    pid = json.loads(output)["pid"]
    assert any(f"serving {first_id}" in line["line"] for line in await logs(plane, first_id))

    for n in range(2, 12):
        invocation_id = await invoke(plane, fn, b"{}")
        record = await final(plane, invocation_id, 30)
        assert record.status is Status.SUCCEEDED and record.cold_start is False
        _, output = await plane.data.invocations.result(invocation_id)
        assert json.loads(output) == {"pid": pid, "served": n}

    failed = await final(plane, await invoke(plane, fn, b'{"fail": true}'), 30)
    assert failed.status is Status.FAILED and failed.error == "KeyError: 'missing thing'"

    # The pool reaches the server with the heartbeats: one idle instance of the revision.
    async def pooled() -> bool:
        worker = await plane.data.workers.get("lambda-e2e")
        pools = worker.pools if worker else ()
        return [(p.function, p.revision, p.idle) for p in pools] == [("warm", fn.revision, 1)]

    await wait_for(pooled, 10)


async def test_a_timeout_is_timed_out_and_the_next_invocation_starts_fresh(
    plane: ControlPlane, agents: list[AgentProcess], code: Path
) -> None:
    await start_agent(plane, agents, "lambda-e2e-timeout", *AGENT)
    fn = await deploy(plane, "slow", **spec(code, timeout_s=2))
    warm = await final(plane, await invoke(plane, fn, b"{}"), 30)
    assert warm.status is Status.SUCCEEDED
    slow = await final(plane, await invoke(plane, fn, b'{"sleep": 30}'), 30)
    assert slow.status is Status.TIMED_OUT
    fresh = await final(plane, await invoke(plane, fn, b"{}"), 30)
    assert fresh.status is Status.SUCCEEDED and fresh.cold_start is True


async def test_warm_min_instances_are_started_across_the_fleet_before_any_invocation(
    plane: ControlPlane, agents: list[AgentProcess], code: Path
) -> None:
    for worker in ("lambda-pre-1", "lambda-pre-2"):
        await start_agent(plane, agents, worker, *AGENT)
    fn = await deploy(plane, "prewarmed", **spec(code, warm={"min": 3, "idle_s": 1}))

    async def idle_instances() -> int:
        total = 0
        for worker in ("lambda-pre-1", "lambda-pre-2"):
            record = await plane.data.workers.get(worker)
            total += sum(p.idle for p in (record.pools if record else ()) if p.function == fn.name)
        return total

    async def three_idle() -> bool:
        return await idle_instances() == 3

    await wait_for(three_idle, 30)
    # The first invocation finds a warm one.
    first = await final(plane, await invoke(plane, fn, b"{}"), 30)
    assert first.status is Status.SUCCEEDED and first.cold_start is False
    # Kept past idle_s: the server asked for them (the floor).
    await asyncio.sleep(1.5)  # longer than idle_s: what must not happen has had its chance
    await wait_for(three_idle, 5)
