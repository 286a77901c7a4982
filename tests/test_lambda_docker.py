"""Lambda container instances against a real engine, with a minimal Runtime API client
written in busybox shell (nc and sed), in the busybox test image."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest
from conftest import wait_for
from lambda_harness import Harness
from test_docker import IMAGE, engine

from hodei.agent.docker_instances import LABEL_INSTANCE, DockerLauncher, network_name
from hodei.agent.docker_runtime import DockerRuntime
from hodei.agent.docker_spec import DockerOptions, host_config
from hodei.agent.identity import LABEL_MARK
from hodei.proto import hodei_pb2 as pb

__all__ = ["engine"]  # the fixture: a real engine with the test image

# The runtime client: a shell loop over the Runtime API (see the file).
RUNTIME = (Path(__file__).parent / "lambda_runtime.sh").read_text()


@pytest.fixture
async def agent(engine: docker.APIClient) -> AsyncIterator[Harness]:
    runtime = DockerRuntime("lambda-test", "a" * 32, 1 << 20, DockerOptions())
    assert await runtime.probe()
    launcher = DockerLauncher(runtime, 1 << 20, "hodei-test")
    harness = Harness(launcher)
    yield harness
    await harness.pool.close()
    await launcher.close()
    runtime.close()


def job(invocation_id: str, event: Any, function: str = "sh", **kw: Any) -> pb.AssignJobRequest:
    fields: dict[str, Any] = {
        "invocation_id": invocation_id,
        "attempt": 1,
        "function": function,
        "runtime": "docker",
        "interface": "lambda",
        "image": IMAGE,
        "command": ["sh", "-c", RUNTIME],
        "revision": "r1",
        "timeout_s": 20,
        "resources": pb.Resources(memory_mb=64, cpu_millicores=500),
    }
    fields.update(kw)
    return pb.AssignJobRequest(payload=json.dumps(event).encode(), **fields)


def instances(engine: docker.APIClient, function: str = "") -> list[dict[str, Any]]:
    labels = [LABEL_INSTANCE, f"{LABEL_MARK}={'a' * 32}"]
    if function:
        labels.append(f"hodei.function={function}")
    found: list[dict[str, Any]] = engine.containers(all=True, filters={"label": labels})
    return found


async def test_a_container_instance_serves_invocations_warm(
    agent: Harness, engine: docker.APIClient
) -> None:
    first = await agent.invoke(
        job("c-1", {"x": 1}, traceparent="00-" + "ab" * 16 + "-" + "cd" * 8 + "-01")
    )
    assert first.outcome == pb.JOB_OUTCOME_SUCCEEDED, first.error
    assert first.cold_start and first.init_ms > 0
    seen = json.loads(first.output)
    assert seen["n"] == 1 and seen["id"] == "c-1" and seen["event"] == {"x": 1}
    assert seen["trace"] == f"Root=1-{'ab' * 4}-{'ab' * 12};Parent={'cd' * 8};Sampled=1"
    assert seen["deadline"] > first.started_at_ms
    gateway = agent.pool.launchers["docker"].networks[False].gateway  # type: ignore[attr-defined]
    assert seen["api"].startswith(gateway + ":")
    for i in range(2, 12):
        result = await agent.invoke(job(f"c-{i}", {"x": i}))
        assert result.outcome == pb.JOB_OUTCOME_SUCCEEDED and not result.cold_start
        assert json.loads(result.output)["n"] == i
    # The engine relays a container's output, so a line written just before the answer can
    # arrive after the invocation ended (the agent waits for the stream to go quiet, briefly):
    # then it misses its invocation's logs and lands in a later one's. Nothing else mixes:
    # every line is there at most once, in its own invocation or a later one.
    seen = []
    for i in range(1, 12):
        for line in agent.logs(f"c-{i}"):
            served = int(line.rsplit("#", 1)[1])
            assert line == f"serving c-{served} #{served}" and served <= i, (i, line)
            seen.append(served)
    assert len(seen) == len(set(seen))
    # How many arrive in time depends on the machine's load; some do.
    assert any(f"serving c-{i} #{i}" in agent.logs(f"c-{i}") for i in range(1, 12))
    assert len(instances(engine, "sh")) == 1


async def test_instance_containers_keep_the_stdio_hardening(
    agent: Harness, engine: docker.APIClient
) -> None:
    await agent.invoke(job("h", {}))
    (container,) = instances(engine, "sh")
    config = engine.inspect_container(container["Id"])["HostConfig"]
    wanted = host_config(job("h", {}), DockerOptions())
    assert config["CapDrop"] == wanted["cap_drop"] == ["ALL"]
    assert config["SecurityOpt"] == ["no-new-privileges"] and config["ReadonlyRootfs"]
    assert config["PidsLimit"] == wanted["pids_limit"]
    assert config["Memory"] == config["MemorySwap"] == 64 * 1024 * 1024
    assert config["NanoCpus"] == 500_000_000
    assert "/tmp" in config["Tmpfs"]
    assert config["NetworkMode"] == network_name("a" * 32, outbound=False)
    assert engine.inspect_container(container["Id"])["Config"]["User"] == "65534:65534"
    network = engine.inspect_network(config["NetworkMode"])
    assert (
        network["Internal"]
        and network["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    )


async def test_without_network_an_instance_reaches_only_its_own_endpoint(
    agent: Harness,
) -> None:
    # A service of the host listening on every address (as a Consul agent may).
    service = await asyncio.start_server(lambda r, w: w.close(), "0.0.0.0", 0)
    port = service.sockets[0].getsockname()[1]
    try:
        probe = await agent.invoke(job("probe", {"probe": 1, "port": port}))
    finally:
        service.close()
    assert probe.outcome == pb.JOB_OUTCOME_SUCCEEDED, probe.error
    seen = dict(item.split("=", 1) for item in json.loads(probe.output).split())
    assert seen == {
        "own": "open",
        "redis-local": "closed",
        "redis-gateway": "closed",
        "internet": "closed",
        "host-service": "closed",
    }


async def test_an_instance_gets_only_its_own_invocations(agent: Harness) -> None:
    """All instances of a network share one listener, which hands each request to the
    endpoint of the container that sent it: there is no other endpoint to ask."""
    victim = await agent.invoke(job("v1", {}, function="victim"))
    thief = await agent.invoke(job("t1", {}, function="thief"))
    api = json.loads(victim.output)["api"]
    assert json.loads(thief.output)["api"] == api
    # Give the victim's idle instance work it holds for a while...
    agent.assign(job("v2", {"sleep": 1}, function="victim", timeout_s=1))
    # ...and anyone else asking gets nothing: the thief's own request is its own `next`
    # (it is answered with the thief's invocation), a stranger's is refused.
    next_url = f"http://{api}/2018-06-01/runtime/invocation/next"
    async with aiohttp.ClientSession() as http, http.get(next_url) as answer:
        assert answer.status == 403
    stolen = await agent.invoke(job("t2", {"x": 2}, function="thief"))
    assert json.loads(stolen.output)["id"] == "t2" and not stolen.cold_start
    assert (await agent.result("v2")).outcome == pb.JOB_OUTCOME_TIMED_OUT


async def test_errors_init_errors_timeouts_and_crashes_in_containers(
    agent: Harness, engine: docker.APIClient
) -> None:
    failed = await agent.invoke(job("f", {"fail": 1}))
    assert failed.outcome == pb.JOB_OUTCOME_FAILED and failed.error == "Shell.Error: it failed"
    ok = await agent.invoke(job("ok", {}))
    assert ok.outcome == pb.JOB_OUTCOME_SUCCEEDED and not ok.cold_start

    init = await agent.invoke(job("i", {}, function="init", env={"INIT_FAIL": "1"}))
    assert init.outcome == pb.JOB_OUTCOME_FAILED and init.error == "Init.Config: no config"

    slow = await agent.invoke(job("s", {"sleep": 1}, timeout_s=2))
    assert slow.outcome == pb.JOB_OUTCOME_TIMED_OUT
    crash = await agent.invoke(job("c", {"crash": 1}))
    assert crash.outcome == pb.JOB_OUTCOME_FAILED and "exit code 3" in crash.error
    assert crash.cold_start  # the timeout took the instance that served "s"
    await wait_for(lambda: not instances(engine, "sh"), 20)
    await wait_for(lambda: not instances(engine, "init"), 20)


async def test_idle_containers_are_reaped(agent: Harness, engine: docker.APIClient) -> None:
    result = await agent.invoke(job("r", {}, warm=pb.WarmPolicy(idle_s=0.5)))
    assert result.outcome == pb.JOB_OUTCOME_SUCCEEDED
    assert instances(engine, "sh")
    await wait_for(lambda: not agent.pools(), 10)
    await wait_for(lambda: not instances(engine, "sh"), 20)


async def test_leftover_instance_containers_are_removed(
    agent: Harness, engine: docker.APIClient
) -> None:
    await agent.invoke(job("l", {}))
    launcher = agent.pool.launchers["docker"]
    assert isinstance(launcher, DockerLauncher)
    # A new life of the same agent (same mark) removes what the previous one left.
    assert await launcher.leftovers() == 1
    assert not instances(engine)


async def test_the_firewall_rules_live_as_long_as_the_network(engine: docker.APIClient) -> None:
    runtime = DockerRuntime("lambda-fw", "c" * 32, 1 << 20, DockerOptions())
    assert await runtime.probe()
    launcher = DockerLauncher(runtime, 1 << 20, "hodei-test")
    tag = network_name("c" * 32, outbound=False)

    def rules() -> list[str]:
        listing = subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True)
        return [r for r in listing.stdout.splitlines() if f"--comment {tag}" in r]

    try:
        network = await launcher.network(outbound=False)
        found = rules()
        assert len(found) == 2, found
        assert any("-j DROP" in r for r in found)
        assert any(f"--dport {network.port}" in r and "-j ACCEPT" in r for r in found)
    finally:
        await launcher.close()
        runtime.close()
    assert rules() == []
    assert not engine.networks(names=[tag]) or all(n["Name"] != tag for n in engine.networks())


async def test_an_image_that_cannot_be_pulled_fails_without_retries(agent: Harness) -> None:
    result = await agent.invoke(job("nopull", {}, image="hodei-test/no-such-image:never"))
    assert result.outcome == pb.JOB_OUTCOME_FAILED and result.final
    assert result.error.startswith("cannot start: image_pull_failed: hodei-test/no-such-image")
    assert not agent.pools()


async def test_an_image_removed_from_the_engine_is_looked_for_again(agent: Harness) -> None:
    launcher = agent.pool.launchers["docker"]
    assert isinstance(launcher, DockerLauncher)
    # The agent saw it once; it has gone from the engine since (no registry has it here).
    launcher.runtime._present.add("hodei-test/lambda-gone:1")
    result = await agent.invoke(job("gone", {}, image="hodei-test/lambda-gone:1"))
    assert result.error.startswith("cannot start: image_pull_failed: hodei-test/lambda-gone")
    assert result.final and "hodei-test/lambda-gone:1" not in launcher.runtime._present
