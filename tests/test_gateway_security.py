"""Least privilege at the gateway (issue 12), each test written as the attack: one-off jobs
need admin unless their image is allow-listed, idempotency keys belong to their caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hodei.api.app import create_app
from hodei.api.settings import GatewaySettings

TOKENS = ("adm:admin+invoke+read", "app:invoke", "app2:invoke+read", "ro:read")
ADMIN = {"Authorization": "Bearer adm"}
APP = {"Authorization": "Bearer app"}
APP2 = {"Authorization": "Bearer app2"}
READ = {"Authorization": "Bearer ro"}
Client = TestClient[web.Request, web.Application]


def settings_for(redis_url: str, **changes: Any) -> GatewaySettings:
    return GatewaySettings(redis_url=redis_url, api_tokens=TOKENS, **changes)


@pytest.fixture
async def http(redis_url: str) -> AsyncIterator[Client]:
    async with TestClient(TestServer(create_app(settings_for(redis_url)))) as client:
        yield client


async def test_an_invoke_token_cannot_run_an_inline_command(http: Client) -> None:
    """The audit's critical finding: an invoke token ran any command as the agent's user."""
    steal = {"runtime": "process", "command": ["sh", "-c", "cat /proc/$PPID/environ"]}
    refused = await http.post("/v1/jobs", json=steal, headers=APP)
    assert refused.status == 403, await refused.text()
    body = await refused.json()
    assert body["error"]["code"] == "forbidden" and "admin" in body["error"]["message"]
    # Nor through a container: no image is allow-listed here.
    docker = {"runtime": "docker", "image": "hodei-test/busybox:latest", "command": ["id"]}
    assert (await http.post("/v1/jobs", json=docker, headers=APP)).status == 403
    # Nothing of the refused jobs was recorded.
    listed = await (await http.get("/v1/invocations", headers=ADMIN)).json()
    assert listed["invocations"] == []
    # An admin may.
    assert (await http.post("/v1/jobs", json=steal, headers=ADMIN)).status == 202


async def test_allow_listed_images_are_open_to_invoke_tokens(redis_url: str) -> None:
    app = create_app(settings_for(redis_url, job_images=("hodei-test/*", "alpine:3.*")))
    async with TestClient(TestServer(app)) as http:

        async def job(**spec: Any) -> int:
            response = await http.post("/v1/jobs", json=spec, headers=APP)
            return response.status

        assert await job(runtime="docker", image="hodei-test/busybox:latest", command=["id"]) == 202
        assert await job(runtime="docker", image="alpine:3.20") == 202
        # An image outside the patterns, the process runtime, or a network: admin only.
        assert await job(runtime="docker", image="alpine:edge") == 403
        assert await job(runtime="docker", image="evil/hodei-test/x") == 403
        assert await job(runtime="process", command=["true"], image="hodei-test/x") == 403
        assert await job(runtime="docker", image="hodei-test/busybox:latest", network=True) == 403
        # A read token may not submit at all.
        spec = {"runtime": "docker", "image": "alpine:3.20"}
        assert (await http.post("/v1/jobs", json=spec, headers=READ)).status == 403


async def test_idempotency_keys_belong_to_their_caller(http: Client) -> None:
    """The audit: a second token sending the same Idempotency-Key got the first caller's
    invocation (and its result)."""
    created = await http.put("/v1/functions/f", json={"command": ["cat"]}, headers=ADMIN)
    assert created.status == 201
    url = "/v1/functions/f/invoke?async=true"
    key = {"Idempotency-Key": "order-42"}
    first = await http.post(url, data=b"alice's", headers={**APP, **key})
    assert first.status == 202
    again = await http.post(url, data=b"alice's", headers={**APP, **key})
    assert (await again.json())["id"] == (await first.json())["id"]
    other = await http.post(url, data=b"alice's", headers={**APP2, **key})
    assert other.status == 202
    assert (await other.json())["id"] != (await first.json())["id"]
    # The same caller, the same key, another payload: refused, naming the first invocation.
    changed = await http.post(url, data=b"something else", headers={**APP, **key})
    assert changed.status == 422
    body = await changed.json()
    assert body["error"]["code"] == "idempotency_key_reused"
    assert body["id"] == (await first.json())["id"]
    # Jobs too: the key is the caller's, the digest covers the payload.
    job = {"runtime": "process", "command": ["cat"], "payload": "one"}
    one = await http.post("/v1/jobs", json=job, headers={**ADMIN, **key})
    assert one.status == 202
    two = await http.post("/v1/jobs", json={**job, "payload": "two"}, headers={**ADMIN, **key})
    assert two.status == 422
