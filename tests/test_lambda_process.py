"""Lambda process instances with the real AWS runtime client (``awslambdaric`` from PyPI),
driven as the server drives an agent: assignments into the process manager, results out."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import sandbox_config, wait_for
from lambda_harness import Harness

from hodei.agent.process_instances import ProcessLauncher
from hodei.agent.process_runtime import ProcessRuntime
from hodei.agent.sandbox import Sandbox
from hodei.domain import JOB_REVISION_PREFIX
from hodei.proto import hodei_pb2 as pb

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


# The handlers: files of the project, readable by a sandboxed function's uid (/tmp is not:
# each function has a private one).
CODE = Path(__file__).parent / "lambda_functions"


@pytest.fixture(params=["sandboxed", "unsandboxed"])
async def spawner(request: pytest.FixtureRequest) -> AsyncIterator[Sandbox]:
    """The agent's spawner: instances confined (own uid, network namespace...), or not."""
    sandbox = Sandbox.start(sandbox_config(request.param == "sandboxed"))
    yield sandbox
    await sandbox.close()


def process_launcher(spawner: Sandbox) -> ProcessLauncher:
    return ProcessLauncher(spawner, "test-mark", 4096, "hodei-test")


@pytest.fixture
def code() -> Path:
    return CODE


@pytest.fixture
async def agent(spawner: Sandbox) -> AsyncIterator[Harness]:
    harness = Harness(process_launcher(spawner))
    yield harness
    await harness.pool.close()


def job(
    code: Path,
    invocation_id: str,
    payload: Any = None,
    function: str = "fn",
    **kw: Any,
) -> pb.AssignJobRequest:
    fields: dict[str, Any] = {
        "invocation_id": invocation_id,
        "attempt": 1,
        "function": function,
        "runtime": "process",
        "interface": "lambda",
        "handler": "fn.handler",
        "revision": "r1",
        "timeout_s": 20,
        "env": {"PYTHONPATH": str(code), "SECRET": "from-spec"},
        "resources": pb.Resources(memory_mb=256),
    }
    fields.update(kw)
    body = payload if isinstance(payload, bytes) else json.dumps(payload or {}).encode()
    return pb.AssignJobRequest(payload=body, **fields)


def output(result: pb.JobResult) -> Any:
    return json.loads(result.output)


async def test_a_cold_then_warm_invocation_with_the_runtime_clients_view(
    agent: Harness, code: Path
) -> None:
    first = await agent.invoke(job(code, "inv-1", {"n": 1}, traceparent=TRACEPARENT))
    assert first.outcome == pb.JOB_OUTCOME_SUCCEEDED, first.error
    assert first.cold_start and first.init_ms > 0
    seen = output(first)
    assert seen["event"] == {"n": 1} and seen["request_id"] == "inv-1" and seen["count"] == 1
    assert seen["arn"].endswith(":function:fn")
    assert 15_000 < seen["remaining_ms"] <= 20_000
    assert seen["memory"] == "256"
    env = seen["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "fn" and env["HODEI_FUNCTION"] == "fn"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "r1" and env["HODEI_REVISION"] == "r1"
    assert env["_HANDLER"] == "fn.handler" and env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert env["AWS_REGION"] == "hodei-test" and env["LAMBDA_TASK_ROOT"] == "/tmp"
    assert env["HODEI_AGENT_MARK"] == "test-mark" and env["SECRET"] == "from-spec"
    # The X-Ray form of the caller's W3C trace, as the client exposes it to the handler.
    assert env["_X_AMZN_TRACE_ID"] == (
        "Root=1-0af76519-16cd43dd8448eb211c80319c;Parent=b7ad6b7169203331;Sampled=1"
    )
    assert "serving inv-1 #1" in agent.logs("inv-1")
    assert "to stderr inv-1" in agent.logs("inv-1")

    second = await agent.invoke(job(code, "inv-2", {"n": 2}))
    assert second.outcome == pb.JOB_OUTCOME_SUCCEEDED and not second.cold_start
    assert second.init_ms == 0
    assert output(second)["pid"] == seen["pid"] and output(second)["count"] == 2
    assert agent.pools() == {"fn@r1": (1, 0, 0)}


async def test_one_instance_serves_a_hundred_invocations_with_their_own_logs(
    agent: Harness, code: Path
) -> None:
    pids = set()
    for i in range(100):
        result = await agent.invoke(job(code, f"inv-{i}", {"i": i}))
        assert result.outcome == pb.JOB_OUTCOME_SUCCEEDED, result.error
        assert result.cold_start == (i == 0)
        seen = output(result)
        assert seen["count"] == i + 1 and seen["event"] == {"i": i}
        pids.add(seen["pid"])
    assert len(pids) == 1
    for i in (0, 1, 57, 99):
        assert agent.logs(f"inv-{i}") == [f"serving inv-{i} #{i + 1}", f"to stderr inv-{i}"]


async def test_a_function_error_fails_the_invocation_and_keeps_the_instance(
    agent: Harness, code: Path
) -> None:
    ok = await agent.invoke(job(code, "ok", {}))
    failed = await agent.invoke(job(code, "bad", {"action": "fail"}))
    assert failed.outcome == pb.JOB_OUTCOME_FAILED and not failed.final
    assert failed.error == "ValueError: no good bad"
    assert any("ValueError" in line for line in agent.logs("bad"))
    # The runtime client joins a record's lines with "\r" (one CloudWatch event): in the
    # logs each is a line of its own (an audit: the traceback printed over itself).
    logged = agent.logs("bad")
    assert "Traceback (most recent call last):" in [line.strip() for line in logged]
    assert not [line for line in logged if "\r" in line]
    again = await agent.invoke(job(code, "ok-again", {}))
    assert again.outcome == pb.JOB_OUTCOME_SUCCEEDED and not again.cold_start
    assert output(again)["pid"] == output(ok)["pid"]


async def test_an_init_error_fails_the_invocation_with_the_runtimes_message(
    agent: Harness, code: Path
) -> None:
    result = await agent.invoke(job(code, "init", {}, handler="broken.handler"))
    assert result.outcome == pb.JOB_OUTCOME_FAILED and result.cold_start
    assert result.error == "RuntimeError: cannot even import"
    await wait_for(lambda: not agent.pool.instances, 10)
    missing = await agent.invoke(job(code, "missing", {}, handler="nosuch.handler"))
    assert missing.outcome == pb.JOB_OUTCOME_FAILED
    assert "Runtime.ImportModuleError" in missing.error and "nosuch" in missing.error


async def test_a_timeout_kills_the_instance_and_the_next_invocation_gets_a_fresh_one(
    agent: Harness, code: Path
) -> None:
    first = await agent.invoke(job(code, "warmup", {}))
    pid = output(first)["pid"]
    slow = await agent.invoke(job(code, "slow", {"action": "sleep", "s": 30}, timeout_s=1.5))
    assert slow.outcome == pb.JOB_OUTCOME_TIMED_OUT and "timed out" in slow.error
    await wait_for(lambda: not psutil.pid_exists(pid), 10)
    fresh = await agent.invoke(job(code, "fresh", {}))
    assert fresh.outcome == pb.JOB_OUTCOME_SUCCEEDED and fresh.cold_start
    assert output(fresh)["pid"] != pid and output(fresh)["count"] == 1


async def test_an_instance_dying_mid_invocation_fails_that_attempt_only(
    agent: Harness, code: Path
) -> None:
    crashed = await agent.invoke(job(code, "crash", {"action": "crash"}))
    assert crashed.outcome == pb.JOB_OUTCOME_FAILED and not crashed.final
    assert "exited during the invocation (exit code 3)" in crashed.error
    retry = await agent.invoke(job(code, "crash", {}, attempt=2))
    assert retry.outcome == pb.JOB_OUTCOME_SUCCEEDED and retry.cold_start


async def test_cancel_kills_the_instance_serving_the_invocation(agent: Harness, code: Path) -> None:
    first = await agent.invoke(job(code, "warm", {}))
    agent.assign(job(code, "long", {"action": "sleep", "s": 30}))
    await wait_for(lambda: agent.pools().get("fn@r1") == (0, 1, 0), 10)
    assert agent.manager.cancel("long", 1)
    cancelled = await agent.result("long")
    assert cancelled.outcome == pb.JOB_OUTCOME_CANCELLED
    await wait_for(lambda: not psutil.pid_exists(output(first)["pid"]), 10)


async def test_an_instance_cannot_pull_another_functions_invocations(
    agent: Harness, code: Path, spawner: Sandbox
) -> None:
    # With the host's network, the victim's endpoint is on the host's loopback, where any
    # local process may connect.
    host = {"network": True}
    victim = await agent.invoke(job(code, "victim", {}, function="victim", **host))
    api = output(victim)["env"]["AWS_LAMBDA_RUNTIME_API"]
    # Give its idle instance work, then let others ask for work at its endpoint.
    agent.assign(job(code, "secret", {"action": "sleep", "s": 0.5}, function="victim", **host))
    steal = {"action": "steal", "api": api}
    thief = await agent.invoke(job(code, "thief", steal, function="thief", **host))
    assert output(thief) == {"status": 403}
    # Sandboxed without network, an instance has a network namespace of its own: the host's
    # loopback is out of reach. Unsandboxed, the endpoint refuses it like any stranger.
    boxed = await agent.invoke(job(code, "boxed", steal, function="boxed"))
    assert output(boxed) == {"status": "unreachable" if spawner.sandboxed else 403}
    assert (await agent.result("secret")).outcome == pb.JOB_OUTCOME_SUCCEEDED
    # Nor can any other local process.
    proc = await asyncio.create_subprocess_exec(
        "python3",
        "-c",
        "import urllib.request, urllib.error, sys\n"
        "try: urllib.request.urlopen(sys.argv[1], timeout=5)\n"
        "except urllib.error.HTTPError as e: print(e.code)",
        f"http://{api}/2018-06-01/runtime/invocation/next",
        stdout=asyncio.subprocess.PIPE,
    )
    assert (await proc.communicate())[0].strip() == b"403"


# (unsandboxed functions have the agent's network: an operator's choice, nothing to test)
@pytest.mark.parametrize("spawner", ["sandboxed"], indirect=True)
async def test_without_network_a_sandboxed_instance_reaches_only_its_endpoint(
    agent: Harness, code: Path, spawner: Sandbox
) -> None:
    assert spawner.sandboxed
    result = await agent.invoke(job(code, "probe", {"action": "redis"}))
    assert result.outcome == pb.JOB_OUTCOME_SUCCEEDED  # its endpoint answered
    assert output(result) == {"redis": "closed"}
    assert (
        output(await agent.invoke(job(code, "probe2", {})))
        .get("env", {})
        .get("AWS_LAMBDA_RUNTIME_API")
        == "127.0.0.1:9001"
    )


async def test_the_response_is_capped_like_stdout(agent: Harness, code: Path) -> None:
    small = await agent.invoke(job(code, "small", {"action": "big", "n": 100}))
    assert json.loads(small.output) == "x" * 100 and not small.output_truncated
    big = await agent.invoke(job(code, "big", {"action": "big", "n": 10_000}))
    assert big.outcome == pb.JOB_OUTCOME_SUCCEEDED
    assert big.output_truncated and big.output == b'"' + b"x" * 4095


async def test_payloads_that_are_not_json_reach_the_handler_as_bytes(
    agent: Harness, code: Path
) -> None:
    result = await agent.invoke(job(code, "raw", b"plain text"))
    assert output(result) == {"raw": "plain text"}
    empty = await agent.invoke(job(code, "empty", b""))
    assert output(empty)["event"] == {}


async def test_instances_of_another_revision_are_never_reused(agent: Harness, code: Path) -> None:
    old = await agent.invoke(job(code, "old", {}))
    new = await agent.invoke(job(code, "new", {}, revision="r2"))
    assert new.cold_start and output(new)["pid"] != output(old)["pid"]
    await wait_for(lambda: not psutil.pid_exists(output(old)["pid"]), 10)
    assert agent.pools() == {"fn@r2": (1, 0, 0)}


async def test_the_maximum_caps_instances_and_queues_invocations(
    agent: Harness, code: Path
) -> None:
    capped = {"warm": pb.WarmPolicy(max=1)}
    agent.assign(job(code, "a", {"action": "sleep", "s": 0.5}, **capped))
    agent.assign(job(code, "b", {}, **capped))
    a, b = await agent.result("a"), await agent.result("b")
    assert a.outcome == b.outcome == pb.JOB_OUTCOME_SUCCEEDED, (a.error, b.error)
    assert a.cold_start and not b.cold_start
    assert output(b)["count"] == 2
    uncapped = [job(code, f"c{i}", {"action": "sleep", "s": 0.5}) for i in range(3)]
    for j in uncapped:
        agent.assign(j)
    results = [await agent.result(j.invocation_id) for j in uncapped]
    assert sum(r.cold_start for r in results) == 2  # one reused the idle instance


async def test_prewarm_starts_instances_ahead_and_keeps_them_past_idle(
    agent: Harness, code: Path
) -> None:
    template = job(code, "", None, warm=pb.WarmPolicy(min=2, idle_s=0.2))
    template.ClearField("payload")
    agent.pool.prewarm(pb.PrewarmRequest(function=template, count=2))
    assert sum(agent.pools()["fn@r1"]) == 2
    await wait_for(lambda: agent.pools().get("fn@r1") == (2, 0, 0), 20)
    result = await agent.invoke(job(code, "after-prewarm", {}, warm=template.warm))
    assert result.outcome == pb.JOB_OUTCOME_SUCCEEDED and not result.cold_start
    # Past idle_s the floor holds both; lowering it lets the reaper take them.
    await asyncio.sleep(0.5)  # longer than idle_s: what must not happen has had its chance
    assert agent.pools()["fn@r1"] == (2, 0, 0)
    agent.pool.prewarm(pb.PrewarmRequest(function=template, count=0))
    await wait_for(lambda: not agent.pools(), 10)


async def test_a_prewarmed_instance_that_dies_is_started_again(agent: Harness, code: Path) -> None:
    template = job(code, "", None, warm=pb.WarmPolicy(min=2))
    template.ClearField("payload")
    agent.pool.prewarm(pb.PrewarmRequest(function=template, count=2))
    await wait_for(lambda: agent.pools().get("fn@r1") == (2, 0, 0), 20)
    first = set(agent.pool.instances)
    served = await agent.invoke(job(code, "one", {}))
    psutil.Process(output(served)["pid"]).kill()  # an OOM kill, a crash, an operator
    await wait_for(lambda: len(set(agent.pool.instances) - first) == 1, 20)
    await wait_for(lambda: agent.pools().get("fn@r1") == (2, 0, 0), 20)


class CountingLauncher:
    """The process launcher, counting its launches."""

    def __init__(self, inner: ProcessLauncher) -> None:
        self.inner = inner
        self.name = inner.name
        self.available = inner.available
        self.launches = 0

    async def launch(self, *args: Any) -> Any:
        self.launches += 1
        return await self.inner.launch(*args)


async def test_a_floor_that_cannot_start_backs_off_instead_of_spinning(
    code: Path, spawner: Sandbox
) -> None:
    launcher = CountingLauncher(process_launcher(spawner))
    agent = Harness(launcher)
    try:
        template = job(code, "", None, command=["/bin/false"], handler="")
        template.ClearField("payload")
        agent.pool.prewarm(pb.PrewarmRequest(function=template, count=2))
        # It does try again (2, then 2 after 0.5 s, 2 after 1 s, 2 after 2 s)...
        await wait_for(lambda: launcher.launches >= 6, 20)
        # ...ever less often: within the next 1.5 s at most one more round.
        seen = launcher.launches
        await asyncio.sleep(1.5)  # a quiet period is what is measured
        assert launcher.launches <= seen + 2
        agent.pool.prewarm(pb.PrewarmRequest(function=template, count=0))
        await wait_for(lambda: not agent.pools(), 10)
        stopped = launcher.launches
        await asyncio.sleep(1.5)
        assert launcher.launches == stopped
    finally:
        await agent.pool.close()


async def test_a_prewarm_claimed_while_starting_serves_as_a_cold_start(
    agent: Harness, code: Path
) -> None:
    template = job(code, "", None)
    agent.pool.prewarm(pb.PrewarmRequest(function=template, count=1))
    result = await agent.invoke(job(code, "early", {}))
    assert result.outcome == pb.JOB_OUTCOME_SUCCEEDED and result.cold_start
    assert agent.pools() == {"fn@r1": (1, 0, 0)}


async def test_idle_instances_are_reaped_after_idle_s(agent: Harness, code: Path) -> None:
    quick = {"warm": pb.WarmPolicy(idle_s=0.3)}
    first = await agent.invoke(job(code, "first", {}, **quick))
    await wait_for(lambda: not agent.pools(), 10)
    await wait_for(lambda: not psutil.pid_exists(output(first)["pid"]), 10)
    again = await agent.invoke(job(code, "again", {}, **quick))
    assert again.cold_start


async def test_a_one_off_jobs_instance_stops_after_its_invocation(
    agent: Harness, code: Path
) -> None:
    """A one-off job runs once: its instance is not kept warm for calls that never come. An
    invoke token's job (warm.idle_s a day) left its runtime running on, past its timeout."""
    lasting = {"warm": pb.WarmPolicy(idle_s=86400), "revision": f"{JOB_REVISION_PREFIX}1"}
    result = await agent.invoke(job(code, "once", {}, **lasting))
    assert result.outcome == pb.JOB_OUTCOME_SUCCEEDED, result.error
    await wait_for(lambda: not agent.pools(), 10)
    await wait_for(lambda: not psutil.pid_exists(output(result)["pid"]), 10)


async def test_idle_instances_are_evicted_least_recently_used_under_memory_pressure(
    code: Path, spawner: Sandbox
) -> None:
    agent = Harness(process_launcher(spawner), capacity_mb=1024)
    try:
        a = await agent.invoke(job(code, "a", {}, function="fa"))
        b = await agent.invoke(job(code, "b", {}, function="fb"))
        c = await agent.invoke(job(code, "c", {}, function="fc"))
        await agent.invoke(job(code, "a2", {}, function="fa"))  # fb is now the oldest
        assert set(agent.pools()) == {"fa@r1", "fb@r1", "fc@r1"}
        # A stdio job needing 400 MB with 256 free: the least recently used one goes.
        agent.reserved = 0
        assert agent.pool.make_room(400)
        await wait_for(lambda: not psutil.pid_exists(output(b)["pid"]), 10)
        assert set(agent.pools()) == {"fa@r1", "fc@r1"}
        # A cold start of a fourth function takes the room of the next oldest (fc).
        agent.reserved = 400
        d = await agent.invoke(job(code, "d", {}, function="fd"))
        assert d.outcome == pb.JOB_OUTCOME_SUCCEEDED
        await wait_for(lambda: not psutil.pid_exists(output(c)["pid"]), 10)
        assert set(agent.pools()) == {"fa@r1", "fd@r1"}
        assert psutil.pid_exists(output(a)["pid"])
        # More than idle instances can free: none is stopped for nothing.
        assert not agent.pool.make_room(4096)
        assert set(agent.pools()) == {"fa@r1", "fd@r1"}
    finally:
        await agent.pool.close()


async def test_a_job_finding_every_uid_held_by_idle_instances_stops_the_oldest_one(
    code: Path,
) -> None:
    """Sandboxed, stdio jobs and instances draw function uids from one set: a job (or an
    invocation's cold start) that finds none free takes the uid of the least recently used
    idle instance instead of failing; a pre-warm never does."""
    sandbox = Sandbox.start(sandbox_config(True, uid_count=2))
    runtime = ProcessRuntime(4096, "test-mark", sandbox)
    agent = Harness(process_launcher(sandbox), runtimes={"process": runtime})
    try:
        template = job(code, "", None, warm=pb.WarmPolicy(min=2))
        template.ClearField("payload")
        agent.pool.prewarm(pb.PrewarmRequest(function=template, count=2))
        await wait_for(lambda: agent.pools().get("fn@r1") == (2, 0, 0), 20)
        used = await agent.invoke(job(code, "warm", {}))  # the other one is now the oldest
        stdio = pb.AssignJobRequest(
            invocation_id="stdio",
            attempt=1,
            function="sh",
            runtime="process",
            command=["/bin/true"],
            timeout_s=20,
            resources=pb.Resources(memory_mb=64),
        )
        result = await agent.invoke(stdio)
        assert result.outcome == pb.JOB_OUTCOME_SUCCEEDED, result.error
        assert agent.pools() == {"fn@r1": (1, 0, 0)}
        assert psutil.pid_exists(output(used)["pid"])
        # The stdio job's uid is free again: fb's cold start takes it.
        fb = await agent.invoke(job(code, "fb", {}, function="fb"))
        assert fb.outcome == pb.JOB_OUTCOME_SUCCEEDED and fb.cold_start, fb.error
        # None is free now: fc's cold start takes fn's, the least recently used.
        fc = await agent.invoke(job(code, "fc", {}, function="fc"))
        assert fc.outcome == pb.JOB_OUTCOME_SUCCEEDED and fc.cold_start, fc.error
        await wait_for(lambda: not psutil.pid_exists(output(used)["pid"]), 10)
        assert agent.pools() == {"fb@r1": (1, 0, 0), "fc@r1": (1, 0, 0)}
        # A pre-warm finds no uid and gives up; nobody's instance is stopped for it.
        template.function = "fd"
        agent.pool.prewarm(pb.PrewarmRequest(function=template, count=1))
        await wait_for(lambda: "fd@r1" not in agent.pools(), 10)
        assert agent.pools() == {"fb@r1": (1, 0, 0), "fc@r1": (1, 0, 0)}
        assert psutil.pid_exists(output(fb)["pid"]) and psutil.pid_exists(output(fc)["pid"])
    finally:
        await agent.pool.close()
        await sandbox.close()


async def test_an_explicit_command_runs_the_runtime_client(agent: Harness, code: Path) -> None:
    command = [sys.executable, "-m", "awslambdaric", "fn.handler"]
    result = await agent.invoke(job(code, "cmd", {"x": 1}, command=command, handler=""))
    assert result.outcome == pb.JOB_OUTCOME_SUCCEEDED, result.error
    assert output(result)["event"] == {"x": 1}
    assert output(result)["env"]["_HANDLER"] is None


async def test_instances_stop_with_the_pool(code: Path, spawner: Sandbox) -> None:
    agent = Harness(process_launcher(spawner))
    result = await agent.invoke(job(code, "one", {}))
    await agent.pool.close()
    assert not agent.pool.instances
    assert not psutil.pid_exists(output(result)["pid"]) or (
        psutil.Process(output(result)["pid"]).status() == psutil.STATUS_ZOMBIE
    )
    assert os.environ.get("AWS_LAMBDA_RUNTIME_API") is None


async def test_the_demo_handler_shipped_with_hodei_runs_warm(agent: Harness, code: Path) -> None:
    demo = {"handler": "hodei.agent.lambda_demo.handler", "env": {}, "function": "demo"}
    first = await agent.invoke(job(code, "d1", {"name": "Ada"}, **demo))
    second = await agent.invoke(job(code, "d2", {}, **demo))
    assert output(first)["hello"] == "Ada" and output(second)["hello"] == "world"
    assert output(second)["served"] == 2 and not second.cold_start
    assert agent.logs("d2") == [
        f"hello world from instance {output(second)['instance_pid']} (invocation 2)"
    ]


async def test_a_prewarm_that_fails_to_initialise_says_why(
    agent: Harness, code: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A newcomer's audit: a pre-warmed function whose handler cannot be imported was
    started again and again with nothing said at any level (no invocation to fail)."""
    template = job(code, "", None, handler="nosuch.handler", warm=pb.WarmPolicy(min=1))
    template.ClearField("payload")
    with caplog.at_level(logging.WARNING, logger="hodei.agent.instances"):
        agent.pool.prewarm(pb.PrewarmRequest(function=template, count=1))

        def said() -> bool:
            return any(
                "Runtime.ImportModuleError" in r.getMessage() and "fn" in r.getMessage()
                for r in caplog.records
            )

        await wait_for(said, 20)
    agent.pool.prewarm(pb.PrewarmRequest(function=template, count=0))
