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
from conftest import (
    AgentProcess,
    logs,
    start_agent,
    wait_for,
)

from hodei.api.app import create_app
from hodei.api.settings import GatewaySettings
from hodei.api.state import GATEWAY
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings

ADMIN = {"Authorization": "Bearer adm"}


def gateway_settings(settings: ServerSettings, **changes: Any) -> GatewaySettings:
    base = GatewaySettings(
        redis_url=settings.redis_url,
        key_prefix=settings.key_prefix,
        ageing_s=settings.ageing_s,
        max_queue=settings.max_queue,
    )
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
    assert http.app[GATEWAY].completions.waiters == {}  # an answered call waits for nothing
    record = await (await http.get(f"/v1/invocations/{inv_id}")).json()
    assert record["status"] == "succeeded" and record["attempt"] == 1
    logs = await (await http.get(f"/v1/invocations/{inv_id}/logs")).json()
    assert [entry["line"] for entry in logs["lines"]] == ["log"]

    accepted = await http.post("/v1/functions/upper/invoke?async=true", data=b"later")
    assert accepted.status == 202
    body = await accepted.json()
    assert accepted.headers["Location"] == f"/v1/invocations/{body['id']}"
    prefer = await http.post(
        "/v1/functions/upper/invoke", data=b"x", headers={"Prefer": "respond-async"}
    )
    assert prefer.status == 202

    async def result() -> bytes | None:
        r = await http.get(f"/v1/invocations/{body['id']}/result")
        return await r.read() if r.status == 200 else None

    assert await wait_for(result, 10) == b"LATER"


async def test_a_sync_call_is_answered_from_its_completion_notice(
    http: TestClient[Any, Any],
    plane: ControlPlane,
    agents: list[AgentProcess],
    settings: ServerSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A waited-on call's final record comes with its completion notice, to the gateway
    waiting alone: it answers without reading the record back, unless the output is too
    large to travel that way."""
    other = TestClient(TestServer(create_app(gateway_settings(settings))))
    await other.start_server()
    heard_by_other: list[str] = []
    other_completions = other.app[GATEWAY].completions
    on_message = other_completions._on_message

    def heard(channel: str, data: bytes) -> None:
        heard_by_other.append(channel)
        on_message(channel, data)

    monkeypatch.setattr(other_completions.subscription, "on_message", heard)
    await start_agent(plane, agents, "w1")
    await deploy(http, "echo", command=["cat"])
    await deploy(http, "fails", command=["sh", "-c", "echo bad >&2; exit 3"])
    await deploy(http, "large", command=["head", "-c", "300000", "/dev/zero"])
    invocations = http.app[GATEWAY].data.invocations
    read_back: list[str] = []
    get_with_output = invocations.get_with_output

    async def counted(invocation_id: str) -> Any:
        read_back.append(invocation_id)
        return await get_with_output(invocation_id)

    monkeypatch.setattr(invocations, "get_with_output", counted)
    echoed = await http.post("/v1/functions/echo/invoke", data=b"\x00\xffbinary")
    assert echoed.status == 200 and await echoed.read() == b"\x00\xffbinary"
    assert echoed.headers["X-Hodei-Status"] == "succeeded"
    assert echoed.headers["X-Hodei-Worker"] == "w1" and "X-Hodei-Duration-Ms" in echoed.headers
    failed = await http.post("/v1/functions/fails/invoke")
    assert failed.status == 500 and failed.headers["X-Hodei-Exit-Code"] == "3"
    assert (await failed.json())["error"]["code"] == "function_failed"
    assert read_back == []
    large = await http.post("/v1/functions/large/invoke")
    assert large.status == 200 and await large.read() == bytes(300000)
    assert read_back == [large.headers["X-Hodei-Invocation-Id"]]
    assert http.app[GATEWAY].completions.waiters == {}
    await other.close()
    # The other gateway heard the completions, and no answer.
    assert set(heard_by_other) == {plane.data.keys.completed_channel}


async def test_function_crud_and_validation(http: TestClient[Any, Any]) -> None:
    created = await http.put("/v1/functions/echo", json={"command": ["cat"]})
    assert created.status == 201
    replaced = await http.put("/v1/functions/echo", json={"command": ["cat"], "max_retries": 1})
    assert replaced.status == 200 and (await replaced.json())["max_retries"] == 1
    listed = await (await http.get("/v1/functions")).json()
    assert [f["name"] for f in listed["functions"]] == ["echo"]
    assert (await (await http.get("/v1/functions/echo")).json())["command"] == ["cat"]
    bad = await http.put(
        "/v1/functions/echo", json={"command": ["cat"], "resources": {"cpu_millicores": 0}}
    )
    assert bad.status == 422
    err = await bad.json()
    assert err["error"]["code"] == "invalid_spec" and err["field"] == "resources.cpu_millicores"
    assert (await http.put("/v1/functions/Bad_Name", json={"command": ["x"]})).status == 422
    assert (await http.put("/v1/functions/echo", data=b"{not json")).status == 400
    assert (await http.delete("/v1/functions/echo")).status == 204
    missing = await http.get("/v1/functions/echo")
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "not_found"
    assert (await http.delete("/v1/functions/echo")).status == 404
    assert (await http.post("/v1/functions/echo/invoke", data=b"")).status == 404


async def test_bad_requests(http: TestClient[Any, Any]) -> None:
    await deploy(http, "f", command=["true"])
    for query, headers in (
        ("?wait=soon", {}),
        ("", {"X-Hodei-Priority": "urgent"}),
        ("", {"X-Callback-Url": "ftp://x"}),
    ):
        response = await http.post(f"/v1/functions/f/invoke{query}", data=b"", headers=headers)
        assert response.status == 400, query
        assert set((await response.json())["error"]) == {"code", "message"}
    assert (await http.get("/v1/invocations?status=weird")).status == 400
    assert (await http.get("/v1/invocations/nope")).status == 404
    assert (await http.delete("/v1/invocations/nope")).status == 404


async def test_hostile_input_gets_a_4xx_never_a_500(http: TestClient[Any, Any]) -> None:
    """The audit's inputs (issue 12): each answered with the contract's error body."""
    await deploy(http, "f", command=["true"])

    async def status_of(response: Any) -> tuple[int, str]:
        body = await response.json()
        return response.status, body["error"]["code"]

    jobs = [
        ({"command": ["cat"], "payload_base64": "%%%not base64"}, 422),
        ({"command": ["cat"], "payload_base64": "w6k="}, 202),
        ({"command": ["cat"], "payload_base64": "wéé="}, 422),
        ({"command": ["cat"], "timeout_s": 10**400}, 422),
        ({"command": ["cat"], "name": "abc\n"}, 422),
    ]
    for body, expected in jobs:
        assert (await http.post("/v1/jobs", json=body)).status == expected, body
    deep = b"[" * 5000 + b"]" * 5000
    assert await status_of(await http.post("/v1/jobs", data=deep)) == (400, "bad_request")
    nested = b'{"a":' * 100 + b"1" + b"}" * 100
    assert (await http.put("/v1/functions/g", data=nested)).status == 400
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        spec = b'{"command": ["x"], "timeout_s": ' + constant + b"}"
        assert (await http.put("/v1/functions/g", data=spec)).status == 400
    assert (await http.get("/v1/functions/g")).status == 404  # nothing half-stored
    for path in ("/v1/invocations/abc:jobs", "/v1/invocations/x:logs/result"):
        assert await status_of(await http.get(path)) == (404, "not_found"), path
    assert await status_of(await http.post("/v1/functions/has%20space/invoke")) == (
        404,
        "not_found",
    )
    for wait in ("nan", "inf", "-1", "1e400"):
        assert (await http.post(f"/v1/functions/f/invoke?wait={wait}")).status == 400, wait
    for limit in ("-5", "1e9", "abc", "99999999999999999999"):
        assert (await http.get(f"/v1/invocations?limit={limit}")).status == 400, limit
    assert (await http.get("/v1/invocations?cursor=';DROP")).status == 400


async def test_payload_limit(settings: ServerSettings) -> None:
    app = create_app(gateway_settings(settings, max_payload_bytes=1024))
    async with TestClient(TestServer(app)) as http:
        await deploy(http, "f", command=["cat"])
        response = await http.post("/v1/functions/f/invoke?async=true", data=b"x" * 2048)
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "payload_too_large"
        ok = await http.post("/v1/functions/f/invoke?async=true", data=b"x" * 512)
        assert ok.status == 202


async def test_tokens_and_scopes(settings: ServerSettings) -> None:
    tokens = ("adm:admin+invoke+read", "app:invoke", "ro:read")
    app = create_app(gateway_settings(settings, api_tokens=tokens))
    async with TestClient(TestServer(app)) as http:
        assert (await http.get("/healthz")).status == 200
        assert (await http.get("/readyz")).status == 200
        assert (await http.get("/openapi.json")).status == 200
        assert (await http.get("/v1/functions")).status == 401
        bad = await http.get("/v1/functions", headers={"Authorization": "Bearer nope"})
        assert bad.status == 401 and bad.headers["WWW-Authenticate"] == "Bearer"
        app_h, ro_h = {"Authorization": "Bearer app"}, {"Authorization": "Bearer ro"}
        spec = {"command": ["true"]}
        assert (await http.put("/v1/functions/f", json=spec, headers=app_h)).status == 403
        assert (await http.put("/v1/functions/f", json=spec, headers=ADMIN)).status == 201
        assert (await http.get("/v1/functions/f", headers=ro_h)).status == 200
        invoke = "/v1/functions/f/invoke?async=true"
        assert (await http.post(invoke, headers=ro_h)).status == 403
        accepted = await http.post(invoke, headers=app_h)
        assert accepted.status == 202
        non_ascii = {"Authorization": "Bearer caf\u00e9"}
        assert (await http.get("/v1/functions", headers=non_ascii)).status == 401
        who = await http.get("/v1/whoami", headers=app_h)
        assert who.status == 200 and (await who.json())["scopes"] == ["invoke"]
        # A read token sees the fleet but cannot drain it.
        assert (await http.get("/v1/workers", headers=ro_h)).status == 200
        assert (await http.post("/v1/workers/w1/drain", headers=ro_h)).status == 403
        record = await http.get(accepted.headers["Location"], headers=ro_h)
        assert record.status == 200


async def test_backpressure(settings: ServerSettings) -> None:
    app = create_app(gateway_settings(settings, max_queue=3))
    async with TestClient(TestServer(app)) as http:
        await deploy(http, "one", command=["true"], concurrency=1)
        await deploy(http, "any", command=["true"])
        first = await http.post("/v1/functions/one/invoke?async=true")
        assert first.status == 202
        limited = await http.post("/v1/functions/one/invoke?async=true")
        assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
        assert (await limited.json())["error"]["code"] == "too_many_requests"
        for _ in range(2):
            assert (await http.post("/v1/functions/any/invoke?async=true")).status == 202
        full = await http.post("/v1/functions/any/invoke?async=true")
        assert full.status == 429 and "Retry-After" in full.headers
        await http.delete(f"/v1/invocations/{(await first.json())['id']}")
        assert (await http.post("/v1/functions/one/invoke?async=true")).status == 202


async def test_failure_timeout_and_wait(
    http: TestClient[Any, Any], plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    await start_agent(plane, agents, "w1")
    await deploy(http, "bad", command=["sh", "-c", "exit 4"], max_retries=0)
    await deploy(http, "slow", command=["sleep", "5"], timeout_s=0.3)
    await deploy(http, "nap", command=["sh", "-c", "sleep 1; echo awake"])
    failed = await http.post("/v1/functions/bad/invoke")
    assert failed.status == 500
    body = await failed.json()
    assert body["error"]["code"] == "function_failed" and body["exit_code"] == 4
    assert failed.headers["X-Hodei-Exit-Code"] == "4"
    timed_out = await http.post("/v1/functions/slow/invoke")
    assert timed_out.status == 504
    assert (await timed_out.json())["error"]["code"] == "function_timed_out"
    waited = await http.post("/v1/functions/nap/invoke?wait=0.2")
    assert waited.status == 504
    body = await waited.json()
    assert body["error"]["code"] == "wait_timeout" and body["status"] in ("queued", "running")
    assert (await http.get(f"/v1/invocations/{body['id']}/result")).status == 409

    async def result() -> bytes | None:
        r = await http.get(f"/v1/invocations/{body['id']}/result")
        return await r.read() if r.status == 200 else None

    assert await wait_for(result, 10) == b"awake\n"


async def test_cancel_queued_and_running(
    http: TestClient[Any, Any], plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    await deploy(http, "long", command=["sh", "-c", "echo up >&2; sleep 30"])
    queued = await (await http.post("/v1/functions/long/invoke?async=true")).json()
    cancelled = await http.delete(f"/v1/invocations/{queued['id']}")
    assert cancelled.status == 202 and (await cancelled.json())["status"] == "cancelled"
    assert (await http.delete(f"/v1/invocations/{queued['id']}")).status == 409
    await start_agent(plane, agents, "w1")
    running = await (await http.post("/v1/functions/long/invoke?async=true")).json()

    async def status(inv_id: str) -> str:
        return str((await (await http.get(f"/v1/invocations/{inv_id}")).json())["status"])

    await wait_for(lambda: logs(plane, running["id"]), 10)
    assert (await http.delete(f"/v1/invocations/{running['id']}")).status == 202

    async def is_cancelled() -> bool:
        return await status(running["id"]) == "cancelled"

    await wait_for(is_cancelled, 10)
    assert await status(queued["id"]) == "cancelled"


async def test_idempotency_priority_jobs_and_listing(
    http: TestClient[Any, Any], plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    await deploy(http, "f", command=["sh", "-c", 'cat; echo " $HODEI_FUNCTION"'])
    key = {"Idempotency-Key": "order-1"}
    first = await (await http.post("/v1/functions/f/invoke?async=true", headers=key)).json()
    again = await (await http.post("/v1/functions/f/invoke?async=true", headers=key)).json()
    assert first["id"] == again["id"]
    low = await (
        await http.post("/v1/functions/f/invoke?async=true", headers={"X-Hodei-Priority": "low"})
    ).json()
    high = await (
        await http.post("/v1/functions/f/invoke?async=true", headers={"X-Hodei-Priority": "high"})
    ).json()
    assert (await (await http.get(f"/v1/invocations/{high['id']}")).json())["priority"] == "high"
    queue = await (await http.get("/v1/queue")).json()
    assert queue["depth"] == {"high": 1, "normal": 1, "low": 1} and queue["oldest_age_s"] >= 0
    job = await http.post(
        "/v1/jobs", json={"name": "adhoc", "command": ["cat"], "payload": "inline", "timeout_s": 5}
    )
    assert job.status == 202
    job_id = (await job.json())["id"]
    assert (await http.post("/v1/jobs", json={"command": "cat"})).status == 422
    assert (await http.post("/v1/jobs", data=b"[1]")).status == 400
    await start_agent(plane, agents, "w1", "--job-slots", "1")

    async def result(inv_id: str) -> bytes | None:
        r = await http.get(f"/v1/invocations/{inv_id}/result")
        return await r.read() if r.status == 200 else None

    assert await wait_for(lambda: result(job_id), 10) == b"inline"
    for inv_id in (first["id"], low["id"], high["id"]):
        await wait_for(lambda i=inv_id: result(i), 10)
    records = {
        i: await (await http.get(f"/v1/invocations/{i}")).json() for i in (high["id"], low["id"])
    }
    assert records[high["id"]]["started_at"] < records[low["id"]]["started_at"]
    listed = await (await http.get("/v1/invocations?function=f&status=succeeded")).json()
    assert {i["id"] for i in listed["invocations"]} == {first["id"], low["id"], high["id"]}
    assert len((await (await http.get("/v1/invocations?limit=1")).json())["invocations"]) == 1


async def test_workers_drain_and_pending_reasons(
    http: TestClient[Any, Any], plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    await start_agent(
        plane, agents, "w1", "--cpu-millicores", "1000", "--memory-mb", "512", "--labels", "zone=eu"
    )
    workers = (await (await http.get("/v1/workers")).json())["workers"]
    assert [(w["id"], w["state"], w["labels"]) for w in workers] == [
        ("w1", "available", {"zone": "eu"})
    ]
    assert workers[0]["capacity"]["cpu_millicores"] == 1000
    one = await (await http.get("/v1/workers/w1")).json()
    assert one["jobs"] == []
    assert (await http.get("/v1/workers/ghost")).status == 404
    drained = await http.post("/v1/workers/w1/drain")
    assert drained.status == 202 and (await drained.json())["state"] == "draining"
    await deploy(http, "f", command=["true"])
    inv = await (await http.post("/v1/functions/f/invoke?async=true")).json()

    async def reason() -> list[Any]:
        return list((await (await http.get("/v1/queue")).json())["pending"])

    pending = await wait_for(reason, 5)
    assert pending[0]["id"] == inv["id"]
    assert pending[0]["pending_reason"] == "no schedulable workers"
    assert (await http.post("/v1/workers/ghost/drain")).status == 404


async def test_callbacks_are_retried_until_delivered(
    settings: ServerSettings, plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    received: list[tuple[dict[str, str], bytes]] = []
    attempts = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            return web.Response(status=503)
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    # The receiver is on loopback, which callbacks reach only when allowed.
    app = create_app(gateway_settings(settings, callback_allow=("127.0.0.1",)))
    async with TestServer(receiver) as server, TestClient(TestServer(app)) as http:
        await start_agent(plane, agents, "w1")
        await deploy(http, "cb", command=["sh", "-c", "echo called back"])
        url = str(server.make_url("/hook"))
        accepted = await http.post(
            "/v1/functions/cb/invoke?async=true", headers={"X-Callback-Url": url}
        )
        inv_id = (await accepted.json())["id"]
        await wait_for(lambda: received, 20)
    headers, body = received[0]
    assert body == b"called back\n" and attempts == 3
    assert headers["X-Hodei-Invocation-Id"] == inv_id
    assert headers["X-Hodei-Status"] == "succeeded"


async def test_logs_follow_streams_until_the_end(
    http: TestClient[Any, Any], plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    await start_agent(plane, agents, "w1")
    await deploy(
        http,
        "talk",
        command=["sh", "-c", "for i in 1 2 3; do echo step$i >&2; sleep 0.3; done; echo done"],
    )
    inv_id = (await (await http.post("/v1/functions/talk/invoke?async=true")).json())["id"]
    response = await http.get(f"/v1/invocations/{inv_id}/logs?follow=true")
    assert response.headers["Content-Type"] == "text/event-stream"
    events = await _sse(response, until="end")
    assert [e["data"]["line"] for e in events if e["event"] == "log"] == ["step1", "step2", "step3"]
    assert events[-1] == {"event": "end", "data": {"id": inv_id, "status": "succeeded"}}


async def test_events_stream_an_invocation_lifecycle(
    http: TestClient[Any, Any], plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    await start_agent(plane, agents, "w1")
    await deploy(http, "ev", command=["sh", "-c", "echo hi >&2"])
    since = "0-0"
    inv_id = (await (await http.post("/v1/functions/ev/invoke?async=true")).json())["id"]
    response = await http.get(f"/v1/events?invocation={inv_id}&since={since}")
    events = await _sse(response, until="finished")
    assert [e["event"] for e in events] == ["queued", "assigned", "started", "log", "finished"]
    assert all(e["data"]["invocation"] == inv_id for e in events)


async def _sse(response: Any, until: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    event: dict[str, Any] = {}
    async with asyncio.timeout(15):
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event["event"] = line[7:]
            elif line.startswith("data: "):
                event["data"] = json.loads(line[6:])
            elif not line and event:
                events.append(event)
                if event["event"] == until:
                    break
                event = {}
    response.close()
    return events


async def test_dead_letters_are_listed_and_replayed(
    http: TestClient[Any, Any], plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    await start_agent(plane, agents, "w1")
    await deploy(http, "doomed", command=["sh", "-c", "echo no >&2; exit 9"], max_retries=1)
    failed = await http.post("/v1/functions/doomed/invoke")
    assert failed.status == 500
    inv_id = failed.headers["X-Hodei-Invocation-Id"]
    dead = (await (await http.get("/v1/dead-letters")).json())["invocations"]
    assert [(d["id"], d["attempt"], d["error"]) for d in dead] == [(inv_id, 2, "exit code 9")]
    replayed = await http.post(f"/v1/invocations/{inv_id}/replay")
    assert replayed.status == 202
    new_id = (await replayed.json())["id"]
    assert new_id != inv_id
    assert (await http.post(f"/v1/invocations/{inv_id}/replay")).status == 409
    assert (await http.post("/v1/invocations/nope/replay")).status == 404

    async def dead_again() -> bool:
        listed = (await (await http.get("/v1/dead-letters")).json())["invocations"]
        return [d["id"] for d in listed] == [new_id]

    await wait_for(dead_again, 15)


async def test_a_gateway_closes_at_once_even_right_after_it_started(
    settings: ServerSettings,
) -> None:
    """Its background loops were connecting to Redis when the close came: on Python 3.11 a
    cancellation arriving then could be swallowed (asyncio.wait_for inside redis-py), and
    the loop went on for ever, holding the shutdown."""
    for _ in range(8):
        client = TestClient(TestServer(create_app(gateway_settings(settings))))
        await client.start_server()
        assert (await client.get("/healthz")).status == 200
        await asyncio.wait_for(client.close(), 5)
