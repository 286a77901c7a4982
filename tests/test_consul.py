"""Consul integration against the in-process double (tests/consul_double.py): agent, server
and gateway registration, placement gated on passing checks, discovery of servers, leader
election with a session and a KV lock."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from conftest import (
    AgentProcess,
    deploy,
    final,
    free_port,
    invoke,
    start_agent,
    wait_for,
)
from consul_double import ConsulDouble, running_consul

from hodei.api.app import create_app
from hodei.api.settings import GatewaySettings
from hodei.consul import connect as connect_consul
from hodei.plugin.consul_fleet import PassingWorkers
from hodei.plugin.models import Status
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings

SMALL = ["--cpu-millicores", "2000", "--memory-mb", "2048", "--job-slots", "4"]
PROCESS_ONLY = ["--runtimes", "process"]


@pytest.fixture
async def consul() -> AsyncIterator[ConsulDouble]:
    async with running_consul() as double:
        yield double


@pytest.fixture
async def consul_plane(
    settings: ServerSettings, consul: ConsulDouble
) -> AsyncIterator[ControlPlane]:
    cp = ControlPlane(
        replace(settings, consul_addr=consul.url, consul_session_ttl_s=10, consul_lock_delay_s=1)
    )
    await cp.start()
    await wait_for(lambda: cp.leader.is_leader, 10)
    yield cp
    await cp.stop(0.5)


@pytest.fixture
async def consul_agents(consul: ConsulDouble) -> AsyncIterator[list[AgentProcess]]:
    """Agents for tests that bring their own control planes (not the ``plane`` fixture,
    whose Redis-elected leader would schedule beside the Consul-elected one)."""
    started: list[AgentProcess] = []
    yield started
    await asyncio.gather(*(agent.stop() for agent in started))


async def consul_agent(
    cp: ControlPlane, agents: list[AgentProcess], consul: ConsulDouble, worker_id: str
) -> AgentProcess:
    agent = AgentProcess(
        cp.port,
        worker_id,
        *SMALL,
        *PROCESS_ONLY,
        env={"CONSUL_HTTP_ADDR": consul.url, "CONSUL_HTTP_TOKEN": "agent-secret"},
    )
    agents.append(agent)

    async def passing() -> bool:
        check = consul.checks.get(f"hodei-agent-{worker_id}-ttl")
        return bool(check and check["Status"] == "passing")

    await wait_for(passing, 15)
    return agent


async def test_agent_registers_with_a_ttl_check_that_heartbeats_pass(
    plane: ControlPlane, agents: list[AgentProcess], consul: ConsulDouble
) -> None:
    await consul_agent(plane, agents, consul, "w1")
    service = consul.services["hodei-agent-w1"]
    assert service["Service"] == "hodei-agent"
    meta = service["Meta"]
    assert (meta["worker_id"], meta["cpu_millicores"], meta["memory_mb"]) == ("w1", "2000", "2048")
    assert meta["job_slots"] == "4" and meta["runtimes"] == "process" and meta["version"]
    check = consul.checks["hodei-agent-w1-ttl"]
    assert check["Type"] == "ttl" and check["ttl"] == 1.0  # 3 beats of 0.2 s, at least 1 s
    assert check["Definition"]["deregistercriticalserviceafter"] == "600000ms"
    assert check["Output"].startswith("running 0/4 jobs, cpu ")
    assert "agent-secret" in consul.tokens  # CONSUL_HTTP_TOKEN is honoured

    fn = await deploy(plane, "nap", command=["sleep", "1"])
    inv_id = await invoke(plane, fn, b"")

    async def shows_the_job() -> bool:
        return consul.checks["hodei-agent-w1-ttl"]["Output"].startswith("running 1/4 jobs")

    await wait_for(shows_the_job, 10)
    await final(plane, inv_id)


@pytest.fixture
async def drain_plane(settings: ServerSettings) -> AsyncIterator[ControlPlane]:
    """Leases closer to production's 20 s than the fast settings' 1.5 s, which a busy CI
    machine outlasted now and then while the agent drained (no heartbeat for 1.9 s: the
    job's lease expired under it); this test is about the drain, not lease expiry."""
    cp = ControlPlane(replace(settings, lease_ttl_s=10))
    await cp.start()
    await wait_for(lambda: cp.leader.is_leader, 10)
    yield cp
    await cp.stop(0.5)


async def test_agent_drains_on_its_kill_signal_warns_then_deregisters(
    drain_plane: ControlPlane, consul_agents: list[AgentProcess], consul: ConsulDouble
) -> None:
    from test_hcl import agent_kill_signal

    plane, agents = drain_plane, consul_agents
    agent = await consul_agent(plane, agents, consul, "w1")
    fn = await deploy(plane, "nap", command=["sleep", "0.8"])  # within the 1 s grace
    inv_id = await invoke(plane, fn, b"")
    await wait_for(
        lambda: consul.checks["hodei-agent-w1-ttl"]["Output"].startswith("running 1"), 10
    )
    # The signal Nomad sends, as the agent's jobspec declares it.
    agent.proc.send_signal(getattr(signal, agent_kill_signal()))

    def warning() -> bool:
        check = consul.checks.get("hodei-agent-w1-ttl")
        return bool(check and check["Status"] == "warning" and "draining" in check["Output"])

    await wait_for(warning, 5)
    await wait_for(lambda: agent.proc.poll() is not None, 15)
    assert agent.proc.returncode == 0
    assert "hodei-agent-w1" not in consul.services
    inv = await final(plane, inv_id)
    assert inv.status is Status.SUCCEEDED  # finished within the drain grace


async def test_a_slow_consul_does_not_hold_up_the_heartbeats(
    plane: ControlPlane, agents: list[AgentProcess], consul: ConsulDouble
) -> None:
    """Consul answering the TTL updates seconds late must not cost the agent its leases:
    its heartbeats to the servers go on beside them."""
    await consul_agent(plane, agents, consul, "w1")
    consul.slow["hodei-agent-w1-ttl"] = 3 * plane.settings.lease_ttl_s
    fn = await deploy(plane, "nap", command=["sleep", "3"], max_retries=0)
    inv = await final(plane, await invoke(plane, fn, b""), 30)
    assert inv.status is Status.SUCCEEDED and inv.attempt == 1, inv


async def test_work_goes_only_to_passing_workers(
    consul_plane: ControlPlane, consul_agents: list[AgentProcess], consul: ConsulDouble
) -> None:
    agents = consul_agents
    cp = consul_plane
    await consul_agent(cp, agents, consul, "w1")
    fn = await deploy(cp, "echo", command=["echo", "ok"])
    assert (await final(cp, await invoke(cp, fn, b""))).status is Status.SUCCEEDED

    # The agent's updates stop reaching Consul: its TTL runs out and the check goes critical.
    consul.unreachable.add("hodei-agent-w1-ttl")
    await wait_for(lambda: consul.checks["hodei-agent-w1-ttl"]["Status"] == "critical", 5)
    await wait_for(lambda: "w1" not in (cp.passing or set()), 5)
    inv_id = await invoke(cp, fn, b"")
    await asyncio.sleep(1.0)
    inv = await cp.data.invocations.get(inv_id)
    assert inv.status is Status.QUEUED and inv.pending_reason
    h = await cp.data.workers.get("w1")
    assert h is not None and h.state in ("available", "running")  # connected, not passing

    consul.unreachable.clear()
    inv = await final(cp, inv_id, 15)
    assert inv.status is Status.SUCCEEDED and inv.worker_id == "w1"


async def test_server_and_gateway_register_with_their_checks(
    redis_url: str, consul_plane: ControlPlane, consul: ConsulDouble
) -> None:
    cp = consul_plane
    server_id = f"hodei-server-{cp.settings.server_id}"
    await wait_for(lambda: server_id in consul.services, 5)
    check = consul.checks[f"{server_id}-grpc"]
    assert check["Type"] == "grpc" and check["Definition"]["grpc"] == f"127.0.0.1:{cp.port}"
    assert check["Definition"]["interval"] and check["Definition"]["timeout"]
    assert consul.services[server_id]["Port"] == cp.port

    port = free_port()
    settings = GatewaySettings(redis_url=redis_url, port=port, consul_addr=consul.url)
    async with TestServer(create_app(settings), port=port):

        def gateways() -> list[dict[str, Any]]:
            return [s for s in consul.services.values() if s["Service"] == "hodei-gateway"]

        await wait_for(gateways, 5)
        [gateway] = gateways()
        assert gateway["Port"] == port
        [check] = [c for c in consul.checks.values() if c["ServiceID"] == gateway["ID"]]
        assert check["Type"] == "http"
        assert check["Definition"]["http"] == f"http://127.0.0.1:{port}/readyz"
        # Consul's probe of /readyz passes while Redis answers.
        await wait_for(lambda: consul.checks[check["CheckID"]]["Status"] == "passing", 5)
        # The URL Consul would probe answers.
        async with (
            aiohttp.ClientSession() as session,
            session.get(check["Definition"]["http"]) as r,
        ):
            assert r.status == 200
    assert not [s for s in consul.services.values() if s["Service"] == "hodei-gateway"]


async def test_agent_finds_its_server_through_consul(
    consul_plane: ControlPlane, consul_agents: list[AgentProcess], consul: ConsulDouble
) -> None:
    agents = consul_agents
    cp = consul_plane
    server_check = f"hodei-server-{cp.settings.server_id}-grpc"
    # Consul probes the server's grpc.health.v1 and finds it SERVING.
    await wait_for(lambda: consul.checks.get(server_check, {}).get("Status") == "passing", 5)
    assert "SERVING" in consul.checks[server_check]["Output"]
    agent = AgentProcess(
        0, "w9", *SMALL, *PROCESS_ONLY, env={"CONSUL_HTTP_ADDR": consul.url}
    )  # no --server
    agents.append(agent)
    await wait_for(
        lambda: consul.checks.get("hodei-agent-w9-ttl", {}).get("Status") == "passing", 15
    )
    fn = await deploy(cp, "echo", command=["echo", "found"])
    inv = await final(cp, await invoke(cp, fn, b""))
    assert inv.worker_id == "w9" and inv.status is Status.SUCCEEDED


async def leader_and_standby(tuned: ServerSettings) -> tuple[ControlPlane, ControlPlane]:
    """Two servers electing through Consul: s1 leads, s2 stands by."""
    first = ControlPlane(replace(tuned, server_id="s1"))
    second = ControlPlane(replace(tuned, server_id="s2"))
    await first.start()
    await wait_for(lambda: first.leader.is_leader, 10)
    await second.start()
    return first, second


async def test_leader_session_expiry_hands_over_without_double_assignment(
    settings: ServerSettings, consul: ConsulDouble
) -> None:
    """Consul's real arithmetic: a paused leader's session is invalidated 2 x TTL after its
    last renewal, then the lock-delay runs; the standby, waiting in a blocking query, takes
    over right after — and never tried to acquire while the lock was held."""
    agents: list[AgentProcess] = []
    ttl, delay = 10, 1  # Consul's minimum TTL; a short lock-delay keeps the test quick
    tuned = replace(
        settings, consul_addr=consul.url, consul_session_ttl_s=ttl, consul_lock_delay_s=delay
    )
    first, second = await leader_and_standby(tuned)
    try:
        await asyncio.sleep(1.5)
        assert not second.leader.is_leader
        await consul_agent(first, agents, consul, "w1")
        fn = await deploy(first, "echo", command=["echo", "once"])

        # The leader freezes (a long pause): it stops renewing but still believes it leads.
        async def frozen() -> None:
            await asyncio.Event().wait()

        first.leader.renew_session = frozen  # type: ignore[method-assign]
        paused_at = time.monotonic()
        # A leader's session is named after its server process: the id, "#", a suffix.
        [session] = [
            s for s in consul.sessions.values() if s["Name"].startswith("hodei-leader-s1#")
        ]
        standby_attempts = [a for a in consul.acquires if a[0].startswith("hodei-leader-s2#")]
        assert not standby_attempts, "the standby tried to acquire a held lock"
        limit = 2 * ttl + delay + 2.5
        submitted = []
        while not second.leader.is_leader:
            submitted.append(await invoke(first, fn, b""))
            assert time.monotonic() - paused_at < limit, "no takeover in time"
            await asyncio.sleep(0.2)
        taken_at = time.monotonic()
        for _ in range(5):
            submitted.append(await invoke(first, fn, b""))
        for inv_id in submitted:
            inv = await final(second, inv_id, 20)
            assert inv.status is Status.SUCCEEDED and inv.attempt == 1
        events = await first.data.redis.xrange(first.data.keys.events)
        assigned = collections.Counter(
            f[b"invocation"].decode() for _, f in events if f.get(b"type") == b"assigned"
        )
        assert all(assigned[i] == 1 for i in submitted), assigned
        since_renewal = taken_at - session["renewed_at"]
        print(f"consul takeover {since_renewal:.2f}s after the leader's last renewal")
        assert 2 * ttl + delay <= since_renewal <= 2 * ttl + delay + 2.5, since_renewal
    finally:
        await asyncio.gather(*(agent.stop() for agent in agents))
        await second.stop(0.5)
        await first.stop(0.5)


async def test_clean_leader_shutdown_hands_over_at_once(
    settings: ServerSettings, consul: ConsulDouble
) -> None:
    tuned = replace(settings, consul_addr=consul.url, consul_session_ttl_s=10)
    first, second = await leader_and_standby(tuned)
    stopping = None
    try:
        await asyncio.sleep(0.5)
        assert not second.leader.is_leader
        held_by = first.leader.session
        assert held_by and consul.kv["hodei/leader"]["Session"] == held_by
        stopping = asyncio.create_task(first.stop(0.5))

        def released() -> bool:
            return bool(consul.kv["hodei/leader"].get("Session") != held_by)

        await wait_for(released, 10)
        released_at = time.monotonic()
        # Released, not invalidated: no lock-delay (15 s here), and the standby's blocking
        # query returns at once.
        await wait_for(lambda: second.leader.is_leader, 3)
        print(f"clean handover {time.monotonic() - released_at:.2f}s after the release")
    finally:
        if stopping is not None:
            await stopping
        await second.stop(0.5)


class ScriptedHealth:
    """A Consul client whose health endpoint answers from a script of indexes."""

    def __init__(self, indexes: list[int]) -> None:
        self.indexes = indexes
        self.asked: list[int | None] = []
        self.health = self

    async def service(self, name: str, **params: Any) -> tuple[str, list[dict[str, Any]]]:
        self.asked.append(params.get("index"))
        index = self.indexes.pop(0) if self.indexes else 99
        meta = {"worker_id": f"w{index}"}
        return str(index), [{"Service": {"ID": f"hodei-agent-w{index}", "Meta": meta}}]


async def test_blocking_query_index_rules() -> None:
    client = ScriptedHealth([5, 7, 3, 0, 4])
    changes: list[set[str]] = []

    async def changed(workers: set[str]) -> None:
        changes.append(workers)

    watch = PassingWorkers(client, changed, wait_s=1, min_interval_s=0.05)
    for _ in range(5):
        await watch.poll()
    # First without an index; then the last one; back to 0 when it went backwards (7 -> 3);
    # an index of 0 from Consul is used as 1, never 0.
    assert client.asked == [None, 5, 7, None, 1]
    assert watch.index == 4 and watch.passing == {"w4"}
    assert changes[0] == {"w5"} and changes[1] == {"w5", "w7"}

    started = time.monotonic()
    runner = asyncio.create_task(watch.run())
    await asyncio.sleep(0.5)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    calls = len(client.asked) - 5
    assert calls <= (time.monotonic() - started) / 0.05 + 1  # rate-limited


async def test_agent_advertises_its_nomad_identity_as_labels(
    plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    env = {
        "NOMAD_DC": "eu-west",
        "NOMAD_REGION": "europe",
        "NOMAD_NODE_NAME": "node-17",
        "NOMAD_NODE_CLASS": "gpu",
        "NOMAD_NODE_META_RACK": "r4",
    }
    await start_agent(plane, agents, "w1", *SMALL, *PROCESS_ONLY, env=env)
    await start_agent(plane, agents, "w2", *SMALL, *PROCESS_ONLY)
    h = await plane.data.workers.get("w1")
    assert h is not None
    assert h.labels["nomad.datacenter"] == "eu-west" and h.labels["meta.rack"] == "r4"
    fn = await deploy(
        plane, "placed", command=["echo", "x"], labels={"nomad.class": "gpu", "meta.rack": "r4"}
    )
    for _ in range(3):
        inv = await final(plane, await invoke(plane, fn, b""))
        assert inv.worker_id == "w1"


async def agent_in_catalog(consul: ConsulDouble, worker_id: str) -> bool:
    """The agent's service is in Consul's catalog and passing (what the UI and the
    servers' watch see), read through the HTTP API."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{consul.url}/v1/health/service/hodei-agent?passing") as r,
    ):
        entries = await r.json()
    return any(e["Service"]["ID"] == f"hodei-agent-{worker_id}" for e in entries)


async def test_agent_service_deleted_from_consul_comes_back(
    plane: ControlPlane, agents: list[AgentProcess], consul: ConsulDouble
) -> None:
    await consul_agent(plane, agents, consul, "w1")
    # An operator (`consul services deregister`) or a Consul agent restarted without its
    # data removes the service; the agent's next TTL update gets a 404.
    async with (
        aiohttp.ClientSession() as http,
        http.put(f"{consul.url}/v1/agent/service/deregister/hodei-agent-w1") as r,
    ):
        assert r.status == 200
    assert not await agent_in_catalog(consul, "w1")
    await wait_for(lambda: agent_in_catalog(consul, "w1"), 5)
    assert "re-registering" in agents[0].output() or "registering it again" in agents[0].output()


async def test_agent_reaped_after_an_outage_registers_again(
    plane: ControlPlane, agents: list[AgentProcess], consul: ConsulDouble
) -> None:
    # Consul reaps a service critical for DeregisterCriticalServiceAfter, at least a minute
    # and within the next 30 s sweep; the double's floor is lowered so the test is quick.
    consul.reap_minimum_s, consul.reap_interval_s = 0.5, 0.2
    agent = AgentProcess(
        plane.port,
        "w1",
        *SMALL,
        *PROCESS_ONLY,
        "--consul-deregister-after-s",
        "1",
        env={"CONSUL_HTTP_ADDR": consul.url},
    )
    agents.append(agent)
    await wait_for(lambda: agent_in_catalog(consul, "w1"), 15)
    consul.unreachable.add("hodei-agent-w1-ttl")  # its updates stop arriving: an outage
    await wait_for(lambda: "hodei-agent-w1" not in consul.services, 10)
    consul.unreachable.clear()
    await wait_for(lambda: agent_in_catalog(consul, "w1"), 5)


async def test_double_syncs_output_only_changes_late_as_consul_does(consul: ConsulDouble) -> None:
    """What the Consul UI shows of a TTL note: a status change reaches the catalog at once,
    an output-only change after check_update_interval (hashicorp/consul#9113), and only
    then does the catalog's index move."""
    consul.output_sync_s = 1.0
    client = connect_consul(consul.url)
    try:
        await client.agent.service.register(
            "probe", service_id="probe-1", check={"CheckID": "probe-ttl", "TTL": "30s"}
        )
        await client.agent.check.ttl_pass("probe-ttl", notes="first")

        async def catalog() -> tuple[int, str]:
            index, [entry] = await client.health.service("probe")
            [check] = [c for c in entry["Checks"] if c["CheckID"] == "probe-ttl"]
            return int(index), check["Output"]

        index, output = await catalog()
        assert output == "first"  # critical -> passing: synced at once
        await client.agent.check.ttl_pass("probe-ttl", notes="second")
        changed_at = time.monotonic()
        local = await client.agent.checks()
        assert local["probe-ttl"]["Output"] == "second"  # the local agent knows at once
        assert await catalog() == (index, "first")  # the catalog does not, yet
        await wait_for(lambda: catalog_shows(catalog, "second"), 3)
        assert time.monotonic() - changed_at >= 0.9
        assert (await catalog())[0] > index
    finally:
        await client.close()


async def catalog_shows(read: Any, output: str) -> bool:
    return bool((await read())[1] == output)


async def test_server_and_gateway_registrations_deleted_from_consul_come_back(
    settings: ServerSettings, consul: ConsulDouble, redis_url: str
) -> None:
    # Each process looks every 3 check intervals whether the local Consul agent still
    # knows its service (py-consul answers a 404 there with None, not NotFound).
    cp = ControlPlane(replace(settings, consul_addr=consul.url, consul_check_interval_s=0.2))
    await cp.start()
    port = free_port()
    gateway_settings = GatewaySettings(
        redis_url=redis_url, port=port, consul_addr=consul.url, consul_check_interval_s=0.2
    )
    try:
        async with TestServer(create_app(gateway_settings), port=port):
            server_id = f"hodei-server-{cp.settings.server_id}"
            await wait_for(lambda: server_id in consul.services, 5)
            # The gateway registers on its own schedule, not after the server.
            await wait_for(
                lambda: any(s["Service"] == "hodei-gateway" for s in consul.services.values()), 5
            )
            [gateway_id] = [
                i for i, s in consul.services.items() if s["Service"] == "hodei-gateway"
            ]
            async with aiohttp.ClientSession() as http:
                for service_id in (server_id, gateway_id):
                    url = f"{consul.url}/v1/agent/service/deregister/{service_id}"
                    async with http.put(url) as r:
                        assert r.status == 200
            assert server_id not in consul.services and gateway_id not in consul.services
            await wait_for(lambda: {server_id, gateway_id} <= set(consul.services), 5)
    finally:
        await cp.stop(0.5)
