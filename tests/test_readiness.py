"""Readiness tells the truth: a server's grpc.health.v1 status and a gateway's /readyz stay
NOT_SERVING / 503 until Redis (and Consul, when configured) have answered — what Nomad's
deployment checks and auto-revert rely on."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import IN_CI, free_port, wait_for
from consul_double import ConsulDouble, running_consul
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hodei.api.app import create_app
from hodei.api.settings import GatewaySettings
from hodei.plugin.data.connection import unsupported_version
from hodei.plugin.server import SERVICE_NAME, ControlPlane
from hodei.plugin.settings import ServerSettings
from hodei.readiness import Readiness

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def status(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(reply.status)


async def serving_is(port: int, wanted: int) -> bool:
    return all([await status(port, s) == wanted for s in ("", SERVICE_NAME)])


@pytest.fixture
def late_redis(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A Redis URL whose server is not started yet; start it with ``start(port)``."""
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is needed to test readiness")
        pytest.skip("no redis-server binary")
    started: list[subprocess.Popen[bytes]] = []
    yield f"redis://127.0.0.1:{free_port()}/0", started
    for proc in started:
        proc.terminate()
        proc.wait(10)


def start_redis(url: str, folder: Path) -> subprocess.Popen[bytes]:
    port = url.rsplit(":", 1)[1].split("/")[0]
    args = [
        "redis-server",
        "--port",
        port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--dir",
        str(folder),
    ]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
async def consul() -> AsyncIterator[ConsulDouble]:
    async with running_consul() as double:
        yield double


async def test_server_is_not_serving_until_redis_answers(
    late_redis: tuple[str, list[subprocess.Popen[bytes]]], tmp_path: Path
) -> None:
    url, started = late_redis
    cp = ControlPlane(replace(ServerSettings(), redis_url=url, grpc_port=0, metrics_port=-1))
    await cp.start()
    try:
        assert await serving_is(cp.port, NOT_SERVING)
        started.append(start_redis(url, tmp_path))
        await wait_for(lambda: serving_is(cp.port, SERVING), 10)
        started.pop().terminate()
        await wait_for(lambda: serving_is(cp.port, NOT_SERVING), 10)
    finally:
        await cp.stop(0.5)


async def test_server_with_consul_is_not_serving_until_consul_answers(
    settings: ServerSettings, consul: ConsulDouble
) -> None:
    consul.leader = ""  # Consul up, but its cluster has no leader: sessions cannot be made
    cp = ControlPlane(replace(settings, consul_addr=consul.url, consul_register=False))
    await cp.start()
    try:
        assert await serving_is(cp.port, NOT_SERVING)
        consul.leader = "127.0.0.1:8300"
        await wait_for(lambda: serving_is(cp.port, SERVING), 10)
    finally:
        await cp.stop(0.5)
    unreachable = ControlPlane(
        replace(settings, consul_addr=f"127.0.0.1:{free_port()}", consul_register=False)
    )
    await unreachable.start()
    try:
        assert await serving_is(unreachable.port, NOT_SERVING)
    finally:
        await unreachable.stop(0.5)


async def test_gateway_readyz_waits_for_consul_when_configured(
    redis_url: str, consul: ConsulDouble
) -> None:
    consul.leader = ""
    settings = GatewaySettings(redis_url=redis_url, consul_addr=consul.url, consul_register=False)
    async with TestClient(TestServer(create_app(settings))) as http:
        response = await http.get("/readyz")
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "consul_unavailable"
        consul.leader = "127.0.0.1:8300"
        assert (await http.get("/readyz")).status == 200
    without = GatewaySettings(redis_url=redis_url)
    async with TestClient(TestServer(create_app(without))) as http:
        assert (await http.get("/readyz")).status == 200  # Consul not configured: not needed


class _DataLayerOf:
    """What readiness asks of the data layer, for a Redis of ``version`` (no Redis older
    than 6.2 can be installed here; the rule itself is tested in test_dev)."""

    def __init__(self, version: str) -> None:
        self.version = version

    async def ping(self) -> bool:
        return True

    async def unsupported(self) -> str:
        return unsupported_version(self.version)


async def test_a_redis_too_old_for_hodei_is_not_ready() -> None:
    problems = await Readiness(_DataLayerOf("6.0.16")).check()
    assert [p.code for p in problems] == ["redis_unsupported"]
    assert "needs Redis 6.2 or later" in problems[0].message
    assert await Readiness(_DataLayerOf("7.0.15")).check() == []
