"""Lambda functions through the whole stack: a real control plane (in-process) assigns
invocations to an agent (its own OS process) whose instances run the real awslambdaric."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import AgentProcess, deploy, final, invoke, logs, start_agent, wait_for

from hodei.plugin.models import Status
from hodei.plugin.server import ControlPlane

HANDLER = """
import os, time
served = 0

def handler(event, context):
    global served
    served += 1
    print(f"serving {context.aws_request_id}")
    if event.get("fail"):
        raise KeyError("missing thing")
    if event.get("sleep"):
        time.sleep(event["sleep"])
    return {"pid": os.getpid(), "served": served}
"""
AGENT = ["--runtimes", "process", "--memory-mb", "4096", "--job-slots", "8"]


@pytest.fixture
def code(tmp_path: Path) -> Path:
    (tmp_path / "fn.py").write_text(HANDLER)
    return tmp_path


def spec(code: Path, **extra: Any) -> dict[str, Any]:
    return {
        "runtime": "process",
        "interface": "lambda",
        "handler": "fn.handler",
        "command": [sys.executable, "-m", "awslambdaric", "fn.handler"],
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
        # A warm start (cold_start false on the wire) is recorded as not cold.
        assert record.status is Status.SUCCEEDED and not record.cold_start
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
