"""Every resource has a budget (issue 11): big outputs and payloads fit the gRPC messages,
binary and endless logs are bounded, and hundreds of event streams share one reader."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import AgentProcess, deploy, final, invoke, logs, start_agent
from test_gateway import gateway_settings

from hodei.api.app import create_app
from hodei.api.streams import EventHub
from hodei.plugin.data.events import Entry
from hodei.plugin.models import Status
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings

SLOTS = ["--job-slots", "2", "--memory-mb", "4096"]


async def finished_events(cp: ControlPlane, invocation_id: str) -> int:
    entries = await cp.data.redis.xrange(cp.data.keys.events)
    return sum(
        1
        for _, f in entries
        if f.get(b"type") == b"finished" and f.get(b"invocation") == invocation_id.encode()
    )


async def test_outputs_and_payloads_beyond_4_mib_travel_once(
    plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    """gRPC's default 4 MiB limit is raised on both ends: a 5 MB result is recorded once
    (no resend loop), a 7 MB one is cut at the 6 MiB output cap and says so, and a 5 MB
    payload reaches the function."""
    await start_agent(plane, agents, "big", *SLOTS)
    five = await deploy(plane, "five", command=["head", "-c", "5000000", "/dev/zero"])
    seven = await deploy(plane, "seven", command=["head", "-c", "7000000", "/dev/zero"])
    count = await deploy(plane, "count", command=["wc", "-c"])
    big = await final(plane, await invoke(plane, five, b""), 60)
    assert big.status is Status.SUCCEEDED and not big.result_truncated
    assert len((await plane.data.invocations.result(big.id))[1]) == 5_000_000
    assert await finished_events(plane, big.id) == 1
    cut = await final(plane, await invoke(plane, seven, b""), 60)
    assert cut.status is Status.SUCCEEDED and cut.result_truncated
    assert len((await plane.data.invocations.result(cut.id))[1]) == 6 * 1024 * 1024
    counted = await final(plane, await invoke(plane, count, b"x" * 5_000_000), 60)
    assert (await plane.data.invocations.result(counted.id))[1].strip() == b"5000000"
    worker = await plane.data.workers.get("big")
    assert worker is not None and worker.state == "available"


async def test_binary_and_endless_logs_stay_within_their_budget(
    settings: ServerSettings, agents: list[AgentProcess]
) -> None:
    """30 MB of 0xFF on stderr: lines are cut after decoding (U+FFFD is three bytes for
    one), batches are bounded in bytes, the invocation keeps 1 MiB of logs and a marker,
    and the stream (and the worker) carries on."""
    # A second server beside the `plane` the agents fixture starts: an id of its own, or the
    # leader of the two takes the agent's stream for its own and finds none.
    own = replace(settings, log_bytes_per_invocation=1 << 20, server_id=f"{settings.server_id}-2")
    cp = ControlPlane(own)
    await cp.start()
    try:
        await start_agent(cp, agents, "noisy", *SLOTS)
        noisy = await deploy(
            cp,
            "noisy",
            command=["sh", "-c", "head -c 30000000 /dev/zero | tr '\\000' '\\377' >&2; echo ok"],
        )
        inv = await final(cp, await invoke(cp, noisy, b""), 120)
        assert inv.status is Status.SUCCEEDED and inv.log_truncated
        kept = await logs(cp, inv.id)
        assert kept[-1]["stream"] == "hodei" and "log truncated" in kept[-1]["line"]
        assert sum(len(e["line"].encode()) for e in kept) <= (1 << 20) + 16 * 1024 * 4
        assert all(len(e["line"].encode()) <= 16 * 1024 for e in kept)
        after = await deploy(cp, "after", command=["echo", "still here"])
        again = await final(cp, await invoke(cp, after, b""), 30)
        assert (await cp.data.invocations.result(again.id))[1] == b"still here\n"
    finally:
        for agent in agents:
            await agent.stop()
        agents.clear()
        await cp.stop(0.5)


@pytest.fixture
async def streaming(settings: ServerSettings) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(gateway_settings(settings, max_streams=1000, max_streams_per_caller=400))
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


async def test_three_hundred_event_streams_share_one_reader(
    streaming: TestClient[Any, Any], plane: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    url = str(streaming.make_url("/v1/events"))
    unlimited = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=unlimited) as session:
        # All at once, as after a gateway restart: the reader, resting, starts again once.
        responses = await asyncio.gather(*(session.get(url) for _ in range(300)))
        assert {r.status for r in responses} == {200}
        # Other routes still answer while they are open.
        fn = await deploy(plane, "ping", command=["true"])
        async with session.get(str(streaming.make_url("/v1/functions"))) as r:
            assert r.status == 200
        async with session.post(
            str(streaming.make_url("/v1/functions/ping/invoke?async=true"))
        ) as r:
            assert r.status == 202
            invocation_id = (await r.json())["id"]
        # Every stream sees the invocation being queued.
        for response in responses[::30]:
            seen = await asyncio.wait_for(_until(response, invocation_id), 30)
            assert seen
        clients = await plane.data.redis.client_list()
        db = str(plane.data.redis.get_connection_kwargs().get("db", 0))
        gateway = [  # this test's (other Hodeis on the host use other databases)
            c for c in clients if c.get("name", "").startswith("hodei-gateway") and c["db"] == db
        ]
        assert len(gateway) <= 10, len(gateway)  # one reader, not one per stream
        for response in responses:  # the clients go away: that is no error
            response.close()
    await asyncio.sleep(0)
    assert fn.name == "ping"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records


async def test_the_event_reader_rests_while_nobody_streams(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every invocation adds several events: a gateway with no open stream reads none of
    them, and the first stream to open is fed from that moment."""
    reads: list[str] = []
    read = plane.data.events.events

    async def counted(after: str, block_ms: int | None, count: int = 1000) -> list[Entry]:
        reads.append(after)
        return await read(after, block_ms, count)

    monkeypatch.setattr(plane.data.events, "events", counted)
    fn = await deploy(plane, "nowhere", command=["true"], labels={"zone": "nowhere"})
    hub = EventHub(plane.data, max_streams=4, max_per_caller=4)
    reader = asyncio.create_task(hub.run())
    try:
        await asyncio.sleep(0)  # the reader's first step
        for _ in range(3):
            await invoke(plane, fn)
        assert reads == []
        subscriber = await hub.subscribe("someone")
        later = await invoke(plane, fn)
        entry = await asyncio.wait_for(subscriber.entries.get(), 15)
        assert entry is not None and entry.fields["invocation"] == later
        hub.unsubscribe(subscriber)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def _until(response: aiohttp.ClientResponse, invocation_id: str) -> bool:
    async for raw in response.content:
        if invocation_id.encode() in raw:
            return True
    return False


async def test_streams_beyond_the_cap_are_refused_before_they_start(
    settings: ServerSettings,
) -> None:
    app = create_app(gateway_settings(settings, max_streams=5, max_streams_per_caller=3))
    async with TestClient(TestServer(app)) as http:
        held = [await http.get("/v1/events") for _ in range(3)]
        assert {r.status for r in held} == {200}
        refused = await http.get("/v1/events")
        assert refused.status == 429 and "Retry-After" in refused.headers
        assert (await refused.json())["error"]["code"] == "too_many_requests"
        for response in held:
            response.close()
