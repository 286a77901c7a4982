"""Redis killed with -9 and started again on its AOF, under a stream of invocations: every
process finds it again by itself, and nothing the gateway acknowledged is left behind.

And every process leaves within seconds of SIGTERM, whatever it served before.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
from conftest import (
    AgentProcess,
    GatewayProcess,
    RedisServer,
    ServerProcess,
    fast_settings,
    free_port,
    wait_for,
)

from hodei.plugin.models import Status
from hodei.plugin.server import ControlPlane

FUNCTION = {"command": ["sh", "-c", "sleep 0.2; echo done"], "max_retries": 5}


async def submit(http: aiohttp.ClientSession, acked: list[str]) -> None:
    """Invoke for ever; what the gateway answers 202 is acknowledged."""
    while True:
        try:
            async with http.post("/v1/functions/steady/invoke?async=true") as r:
                if r.status == 202:
                    acked.append((await r.json())["id"])
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.02)


async def down(http: aiohttp.ClientSession) -> bool:
    return not await ready(http)


async def ready(http: aiohttp.ClientSession) -> bool:
    with contextlib.suppress(aiohttp.ClientError):
        async with http.get("/readyz") as r:
            return r.status == 200
    return False


@contextlib.asynccontextmanager
async def one_of_each(
    redis_url: str, *agent_args: str
) -> AsyncIterator[tuple[ServerProcess, AgentProcess, GatewayProcess]]:
    """A server, an agent (``agent_args``) and a gateway on ``redis_url``, all stopped on
    the way out."""
    port = free_port()
    server = ServerProcess(fast_settings(redis_url), port, "s1")
    server.start()
    agent = AgentProcess(port, "w1", *agent_args)
    gateway = GatewayProcess(redis_url)
    try:
        yield server, agent, gateway
    finally:
        gateway.stop()
        await agent.stop()
        server.stop()


async def echo_deployed(http: aiohttp.ClientSession) -> None:
    """Once the gateway is ready: ``echo`` (``cat``) deployed."""
    await wait_for(lambda: ready(http), 20)
    async with http.put("/v1/functions/echo", json={"command": ["cat"]}) as r:
        assert r.status == 201


async def test_redis_killed_and_restarted_loses_no_acknowledged_invocation(
    own_redis: RedisServer,
) -> None:
    settings = replace(fast_settings(own_redis.url), lease_ttl_s=3.0)
    ports = free_port(), free_port()
    servers = [ServerProcess(settings, port, f"s{i}") for i, port in enumerate(ports, 1)]
    for server in servers:
        server.start()
    # One agent on each server: the leader's assignments for the other one's agent go
    # through that server's inbox.
    agents = [
        AgentProcess(port, f"w{i}", "--job-slots", "4", "--result-resend-s", "0.5")
        for i, port in enumerate(ports, 1)
    ]
    gateway = GatewayProcess(own_redis.url)
    view = ControlPlane(settings)
    acked: list[str] = []
    try:
        async with aiohttp.ClientSession(gateway.url) as http:
            await wait_for(lambda: ready(http), 20)
            async with http.put("/v1/functions/steady", json=FUNCTION) as r:
                assert r.status == 201

            async def both_connected() -> bool:
                found = [await view.data.workers.get(f"w{i}") for i in (1, 2)]
                return all(w is not None and w.state in ("available", "running") for w in found)

            await wait_for(both_connected, 30)
            submitter = asyncio.create_task(submit(http, acked))
            try:
                await wait_for(lambda: len(acked) >= 20, 30)

                async def some_running() -> bool:
                    page = await view.data.invocations.recent(status=Status.RUNNING)
                    return len(page.invocations) >= 2

                await wait_for(some_running, 30)  # mid-assignment, mid-result
                own_redis.kill()
                await wait_for(lambda: down(http), 10)
                before_restart = len(acked)
                own_redis.start()
                await wait_for(lambda: ready(http), 20)
                await wait_for(lambda: len(acked) >= before_restart + 20, 60)
            finally:
                submitter.cancel()
                await asyncio.gather(submitter, return_exceptions=True)

            async def all_final() -> bool:
                for invocation_id in acked:
                    if not (await view.data.invocations.get(invocation_id)).status.final:
                        return False
                return True

            await wait_for(all_final, 90)
            statuses = {(await view.data.invocations.get(i)).status for i in acked}
            assert statuses == {Status.SUCCEEDED}, statuses
            # Fresh work runs, synchronously too, with nothing restarted by hand.
            started = time.monotonic()
            async with http.post("/v1/functions/steady/invoke?wait=30") as r:
                assert r.status == 200 and await r.read() == b"done\n"
            assert time.monotonic() - started < 15
            # Both servers read their inboxes again (not just the leader's).
            for worker in ("w1", "w2"):
                page = await view.data.invocations.recent(function="steady", limit=1000)
                assert any(inv.worker_id == worker for inv in page.invocations)
            for server in servers:
                # Each of its loops said so once for the one outage, not once per retry.
                said = collections.Counter(
                    json.loads(line)["message"].split(":")[0]
                    for line in server.log_path.read_text().splitlines()
                    if "Redis unavailable" in line
                )
                assert all(n == 1 for n in said.values()), said
    finally:
        gateway.stop()
        await asyncio.gather(*(agent.stop() for agent in agents))
        for server in servers:
            server.stop()
        await view.data.close()


async def test_every_process_leaves_soon_after_sigterm_whatever_it_served(
    own_redis: RedisServer,
) -> None:
    async with (
        one_of_each(own_redis.url) as (server, agent, gateway),
        aiohttp.ClientSession(gateway.url) as http,
    ):
        await echo_deployed(http)
        for _ in range(3):  # a sync invoke holds a completion waiter and a keep-alive
            async with http.post("/v1/functions/echo/invoke?wait=30", data=b"x") as r:
                assert r.status == 200
        async with http.get("/v1/events") as events:  # an open stream too
            assert events.status == 200
            for process in (gateway.proc, agent.proc, server.proc):
                assert process is not None
                started = time.monotonic()
                process.send_signal(signal.SIGTERM)
                await wait_for(lambda p=process: p.poll() is not None, 10)
                assert time.monotonic() - started < 10


async def test_an_agent_whose_servers_are_gone_leaves_soon_after_sigterm(
    own_redis: RedisServer,
) -> None:
    """Nothing runs and no server answers: waiting out the drain budget changes nothing."""
    drain = ("--drain-grace-s", "30", "--drain-handback-s", "8")
    async with one_of_each(own_redis.url, *drain) as (server, agent, gateway):
        async with aiohttp.ClientSession(gateway.url) as http:
            await echo_deployed(http)
            async with http.post("/v1/functions/echo/invoke?wait=30", data=b"x") as r:
                assert r.status == 200
        server.stop()
        assert agent.proc is not None
        started = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        await wait_for(lambda: agent.proc.poll() is not None, 20)
        assert time.monotonic() - started < 8, agent.output()[-2000:]
        assert agent.proc.returncode == 0
