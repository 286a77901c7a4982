"""The HTTP gateway through real HTTP against the real app, with a real server and agents."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import AgentProcess, start_agent, wait_for

from hodei.api.app import create_app
from hodei.api.settings import GatewaySettings
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings

ADMIN = {"Authorization": "Bearer adm"}


def gateway_settings(settings: ServerSettings, **changes: Any) -> GatewaySettings:
    base = GatewaySettings(redis_url=settings.redis_url, key_prefix=settings.key_prefix,
                           ageing_s=settings.ageing_s, max_queue=settings.max_queue)
    return replace(base, **changes)


@pytest.fixture
async def http(settings: ServerSettings) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    client = TestClient(TestServer(create_app(gateway_settings(settings))))
    await client.start_server()
    yield client
    await client.close()


async def deploy(http: TestClient[Any, Any], name: str, **spec: Any) -> None:
    response = await http.put(f"/v1/functions/{name}", json=spec)
    assert response.status in (200, 201), await response.text()


async def test_health_readiness_metrics_openapi(http: TestClient[Any, Any]) -> None:
    assert (await http.get("/healthz")).status == 200
    assert (await http.get("/readyz")).status == 200
    metrics = await (await http.get("/metrics")).text()
    assert "hodei_gateway_requests_in_flight" in metrics
    doc = await (await http.get("/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"


async def test_sync_and_async_invoke(
    http: TestClient[Any, Any], plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    await start_agent(plane, agents, "w1")
    await deploy(http, "upper", command=["sh", "-c", "echo log >&2; tr a-z A-Z"])
    response = await http.post("/v1/functions/upper/invoke", data=b"hello")
    assert response.status == 200, await response.text()
    assert await response.read() == b"HELLO"
    assert response.headers["X-Hodei-Status"] == "succeeded"
    assert response.headers["X-Hodei-Exit-Code"] == "0"
    assert response.headers["X-Hodei-Worker"] == "w1"
    inv_id = response.headers["X-Hodei-Invocation-Id"]
    record = await (await http.get(f"/v1/invocations/{inv_id}")).json()
    assert record["status"] == "succeeded" and record["attempt"] == 1
    logs = await (await http.get(f"/v1/invocations/{inv_id}/logs")).json()
    assert [entry["line"] for entry in logs["lines"]] == ["log"]

    accepted = await http.post("/v1/functions/upper/invoke?async=true", data=b"later")
    assert accepted.status == 202
    body = await accepted.json()
    assert accepted.headers["Location"] == f"/v1/invocations/{body['id']}"
    prefer = await http.post("/v1/functions/upper/invoke", data=b"x",
                             headers={"Prefer": "respond-async"})
    assert prefer.status == 202

    async def result() -> bytes | None:
        r = await http.get(f"/v1/invocations/{body['id']}/result")
        return await r.read() if r.status == 200 else None

    assert await wait_for(result, 10) == b"LATER"
