"""The gateway as an operator meets it: processes that die, a Redis that goes away, the
OpenAPI document. (The CLI, the Python clients and `hodei dev`: test_cli, test_client,
test_dev.)"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import IN_CI, AgentProcess, free_port, start_agent, wait_for
from redis.asyncio import Redis
from test_gateway import gateway_settings

from hodei.api.app import create_app
from hodei.api.openapi import document
from hodei.client import HodeiClient
from hodei.errors import GatewayUnreachable
from hodei.plugin.data.keys import Keys
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings


def test_openapi_documents_exactly_the_routes() -> None:
    app = create_app(gateway_settings(ServerSettings()))
    served = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    documented = {(method, path) for path, ops in document()["paths"].items() for method in ops}
    assert served == documented
    for path, ops in document()["paths"].items():
        for op in ops.values():
            assert op["responses"], path
            names = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert names == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}


def _start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        if IN_CI:
            pytest.fail("redis-server is needed to test a Redis outage")
        pytest.skip("no redis-server binary")
    return subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_redis_outage_is_503_then_recovers(tmp_path: Path) -> None:
    port = free_port()
    redis = _start_redis(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    settings = replace(ServerSettings(), redis_url=url)
    try:
        async with TestClient(TestServer(create_app(gateway_settings(settings)))) as http:
            await wait_for(lambda: _ready(http), 10)
            assert (await http.put("/v1/functions/f", json={"command": ["true"]})).status == 201
            redis.terminate()
            redis.wait(10)
            assert (await http.get("/readyz")).status == 503
            down = await http.post("/v1/functions/f/invoke?async=true")
            assert down.status == 503
            assert (await down.json())["error"]["code"] == "redis_unavailable"
            assert (await http.get("/healthz")).status == 200
            redis = _start_redis(port, tmp_path)
            await wait_for(lambda: _ready(http), 10)
            # The data did not survive (no persistence here); the gateway did.
            assert (await http.put("/v1/functions/f", json={"command": ["true"]})).status == 201
            assert (await http.post("/v1/functions/f/invoke?async=true")).status == 202
    finally:
        redis.terminate()
        redis.wait(10)


async def test_an_unexpected_failure_is_a_500_with_the_error_body(
    settings: ServerSettings,
) -> None:
    """Whatever breaks (here a key of the wrong type, as a hand-edited Redis gives), the
    client gets the contract's error body, not aiohttp's bare page (the CLI called that
    "not a Hodei gateway"), and the gateway logs what happened."""
    async with TestClient(TestServer(create_app(gateway_settings(settings)))) as http:
        assert (await http.put("/v1/functions/f", json={"command": ["true"]})).status == 201
        redis = Redis.from_url(settings.redis_url)
        try:
            await redis.delete(Keys(settings.key_prefix).function("f"))
            await redis.hset(Keys(settings.key_prefix).function("f"), "not", "a string")
            broken = await http.post("/v1/functions/f/invoke?async=true")
            assert broken.status == 500
            assert (await broken.json())["error"]["code"] == "internal_error"
        finally:
            await redis.aclose()


async def _ready(http: Any) -> bool:
    return bool((await http.get("/readyz")).status == 200)


async def test_gateway_killed_while_invocations_are_queued(
    settings: ServerSettings, plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "hodei.cli",
        "gateway",
        "--port",
        str(port),
        "--redis-url",
        settings.redis_url,
    ]
    gateway = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    client = HodeiClient(url, timeout=10)
    try:
        await wait_for(lambda: _up(client), 15)
        await asyncio.to_thread(client.deploy, "later", {"command": ["sh", "-c", "echo kept"]})
        ids = [
            (await asyncio.to_thread(client.invoke, "later", b"", asynchronous=True)).invocation_id
            for _ in range(5)
        ]
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(10)
        await start_agent(plane, agents, "w1")
        for inv_id in ids:
            await wait_for(lambda i=inv_id: _status_is(plane, i, "succeeded"), 15)
        gateway = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await wait_for(lambda: _up(client), 15)
        for inv_id in ids:
            assert (await asyncio.to_thread(client.invocation, inv_id))["status"] == "succeeded"
            assert await asyncio.to_thread(client.result, inv_id) == b"kept\n"
    finally:
        gateway.terminate()
        gateway.wait(10)


async def _up(client: HodeiClient) -> bool:
    try:
        await asyncio.to_thread(client.queue)
        return True
    except GatewayUnreachable:
        return False


async def _status_is(plane: ControlPlane, inv_id: str, status: str) -> bool:
    return str((await plane.data.invocations.get(inv_id)).status) == status
