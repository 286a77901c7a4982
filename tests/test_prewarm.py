"""Pre-warming: warm.min instances of a lambda function kept started across the fleet, and
the scheduler preferring the workers that hold an idle one."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from conftest import AgentProcess, deploy, final, invoke, start_agent, wait_for

from hodei.plugin import prewarm
from hodei.plugin.models import FunctionSpec, Status
from hodei.plugin.placement import Fleet, WorkerView
from hodei.plugin.server import ControlPlane


def lambda_spec(name: str = "f", **warm: int) -> FunctionSpec:
    return FunctionSpec.from_dict(
        name,
        {
            "interface": "lambda",
            "handler": "app.handler",
            "resources": {"cpu_millicores": 100, "memory_mb": 256},
            "warm": warm,
        },
    )


def fleet(*workers: WorkerView) -> Fleet:
    f = Fleet()
    for w in workers:
        f.upsert(w)
    return f


def worker(name: str, **kw: Any) -> WorkerView:
    return WorkerView(name, 4000, 8192, 0, 8, runtimes=frozenset({"process"}), **kw)


def test_warm_min_spreads_over_the_workers_that_can_host_it() -> None:
    spec = lambda_spec(min=3, max=2)
    small = WorkerView("small", 4000, 128, 0, 8, runtimes=frozenset({"process"}))
    docker_only = WorkerView("d", 4000, 8192, 0, 8, runtimes=frozenset({"docker"}))
    plan = prewarm.plan([(spec, "r1")], fleet(worker("a"), worker("b"), small, docker_only))
    assert plan == {("a", "f:r1"): 2, ("b", "f:r1"): 1}  # never over warm.max on one


def test_workers_holding_instances_keep_them() -> None:
    spec = lambda_spec(min=1)
    f = fleet(worker("a"), worker("b", instances={"f:r1": 1}))
    assert prewarm.plan([(spec, "r1")], f) == {("b", "f:r1"): 1}
    stdio = FunctionSpec.from_dict("s", {"command": ["true"]})
    assert prewarm.plan([(stdio, "r"), (lambda_spec(min=0), "r1")], f) == {}


def test_only_changes_are_sent_and_dropped_floors_go_to_zero() -> None:
    sent = {("a", "f:r1"): 2, ("b", "f:r1"): 1}
    wanted = {("a", "f:r2"): 2, ("b", "f:r1"): 1}
    assert prewarm.changes(sent, wanted) == {("a", "f:r2"): 2, ("a", "f:r1"): 0}
    assert prewarm.changes(wanted, wanted) == {}


async def test_warm_min_instances_are_started_before_any_invocation(
    plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    # A folder of the project: a sandboxed instance's uid can read it (not the test's /tmp).
    code = Path(__file__).parent / "lambda_functions"
    await start_agent(plane, agents, "pw1", "--runtimes", "process", "--job-slots", "4")
    fn = await deploy(
        plane,
        "prewarmed",
        interface="lambda",
        handler="counter.handler",
        command=[sys.executable, "-m", "awslambdaric", "counter.handler"],
        env={"PYTHONPATH": str(code)},
        resources={"memory_mb": 256},
        warm={"min": 1, "idle_s": 600},
    )

    async def idle_instance() -> bool:
        w = await plane.data.workers.get("pw1")
        return bool(w and any(p.function == "prewarmed" and p.idle >= 1 for p in w.pools))

    await wait_for(idle_instance, 60)
    inv = await final(plane, await invoke(plane, fn, b"{}"), 30)
    assert inv.status is Status.SUCCEEDED and inv.cold_start is False
