"""No token gets more than its scope (a security audit), each test written as the attack:
a read token saw the secrets in functions' env; an invoke token replayed an admin's
inline-command job; an invoke token's job could run for a day."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from test_gateway_security import ADMIN, APP, APP2, READ, Client, settings_for

from hodei.api.app import create_app
from hodei.api.openapi import document
from hodei.api.settings import GatewaySettings
from hodei.api.state import GATEWAY
from hodei.domain import WorkerState
from hodei.plugin.data import DataLayer
from hodei.plugin.data.leases import AttemptEnd, Lease
from hodei.plugin.data.records import Amounts

HIDDEN = "(hidden: needs the admin scope)"
SECRET_ENV = {"DB_PASSWORD": "hunter2", "REGION": "eu-west-1"}
ALLOWED = {"runtime": "docker", "image": "hodei-test/busybox:latest", "max_retries": 0}


async def _dead_letter(data: DataLayer, invocation_id: str) -> None:
    """Run one attempt on a worker of the test's own, and fail it for good."""
    if not await data.workers.get("w1"):
        reg = await data.workers.register(
            "w1",
            "s1",
            hostname="h",
            version="t",
            capacity=Amounts(64_000, 64_000, 0, 64),
            labels={},
            runtimes=["process", "docker"],
            running=[],
        )
        await data.workers.transition("w1", WorkerState.AVAILABLE, reg.session_id)
    assert isinstance(await data.leases.assign(invocation_id, "w1", ""), Lease)
    await data.leases.end(AttemptEnd(invocation_id, 1, "w1", "failed", exit_code=1))
    assert invocation_id in [i.id for i in await data.invocations.dead_letters()]


async def _submit(http: Client, headers: dict[str, str], **spec: Any) -> str:
    accepted = await http.post("/v1/jobs", json=spec, headers=headers)
    assert accepted.status == 202, await accepted.text()
    return str((await accepted.json())["id"])


async def test_env_values_need_the_admin_scope(redis_url: str) -> None:
    """The audit: a read token saw every function's env values (where secrets go) through
    GET /v1/functions[/{name}], and so through the console and `hodei fn show|ls`."""
    app = create_app(settings_for(redis_url))
    async with TestClient(TestServer(app)) as http:
        spec = {"command": ["cat"], "env": SECRET_ENV}
        assert (await http.put("/v1/functions/f", json=spec, headers=ADMIN)).status == 201
        for caller in (READ, APP2):
            one = await http.get("/v1/functions/f", headers=caller)
            listed = await http.get("/v1/functions", headers=caller)
            assert one.status == listed.status == 200
            assert "hunter2" not in await one.text() + await listed.text()
            for shown in (await one.json(), (await listed.json())["functions"][0]):
                # The names stay (what a function is configured with); values are hidden.
                assert shown["env"] == {"DB_PASSWORD": HIDDEN, "REGION": HIDDEN}
                assert shown["env_redacted"] is True
                assert shown["command"] == ["cat"]
        assert (await http.get("/v1/functions/f", headers=APP)).status == 403  # no read
        # An admin sees the values, and what it read goes back as it was.
        seen = await (await http.get("/v1/functions/f", headers=ADMIN)).json()
        assert seen["env"] == SECRET_ENV and "env_redacted" not in seen
        again = await http.put("/v1/functions/f", json=seen, headers=ADMIN)
        assert again.status == 200, await again.text()
        # What a lesser token read never goes back: the marker would replace the secrets.
        redacted = await (await http.get("/v1/functions/f", headers=READ)).json()
        for body in (redacted, {k: v for k, v in redacted.items() if k != "env_redacted"}):
            refused = await http.put("/v1/functions/f", json=body, headers=ADMIN)
            assert refused.status == 422, await refused.text()
            answer = await refused.json()
            assert answer["error"]["code"] == "invalid_spec"
            assert answer["field"].startswith("env") and "admin" in answer["error"]["message"]
        stored = await app[GATEWAY].data.functions.get("f")
        assert stored.env == SECRET_ENV
        # Nor does a one-off job run with the marker for a value.
        job = {"command": ["env"], "env": {"DB_PASSWORD": HIDDEN}}
        assert (await http.post("/v1/jobs", json=job, headers=ADMIN)).status == 422
        # A job's env shows nowhere: not in its record, nor in the events.
        job_id = await _submit(http, ADMIN, command=["env"], env=SECRET_ENV)
        for url in (f"/v1/invocations/{job_id}", "/v1/invocations", "/v1/dead-letters"):
            read = await http.get(url, headers=READ)
            assert read.status == 200 and "hunter2" not in await read.text()
        events = [e.fields for e in await app[GATEWAY].data.events.events("0-0", None)]
        assert events and "hunter2" not in repr(events)
    # Without tokens, the one caller is everyone's admin.
    open_app = create_app(GatewaySettings(redis_url=redis_url))
    async with TestClient(TestServer(open_app)) as http:
        assert (await (await http.get("/v1/functions/f")).json())["env"] == SECRET_ENV
        listed = await (await http.get("/v1/functions")).json()
        assert listed["functions"][0]["env"] == SECRET_ENV


def test_the_document_says_env_values_are_hidden() -> None:
    schemas = document()["components"]["schemas"]
    read = document()["paths"]["/v1/functions/{name}"]["get"]["responses"]["200"]
    assert read["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Function"
    }
    function = schemas["Function"]["properties"]
    assert HIDDEN in function["env"]["description"] and function["env_redacted"]["const"] is True
    # What a PUT or a job may not carry: the marker.
    for name in ("FunctionSpec", "JobSpec"):
        values = schemas[name]["properties"]["env"]["additionalProperties"]
        assert values["not"] == {"const": HIDDEN}


async def test_replaying_a_job_needs_the_scope_submitting_it_needs(redis_url: str) -> None:
    """The audit: an invoke token replayed a dead-lettered job an admin had submitted with
    an inline command, and so ran an admin's command."""
    app = create_app(settings_for(redis_url, job_images=("hodei-test/*",)))
    async with TestClient(TestServer(app)) as http:
        data = app[GATEWAY].data
        inline = await _submit(
            http, ADMIN, name="cleanup", command=["rm", "-rf", "/srv/x"], max_retries=0
        )
        networked = await _submit(http, ADMIN, name="fetch", **ALLOWED, network=True)
        allowed = await _submit(http, APP, name="thumb", **ALLOWED)
        spec = {"command": ["cat"], "max_retries": 0}
        assert (await http.put("/v1/functions/f", json=spec, headers=ADMIN)).status == 201
        invoked = await http.post("/v1/functions/f/invoke?async=true", headers=APP)
        function_call = str((await invoked.json())["id"])
        for dead in (inline, networked, allowed, function_call):
            await _dead_letter(data, dead)
        for admins_job in (inline, networked):
            refused = await http.post(f"/v1/invocations/{admins_job}/replay", headers=APP)
            assert refused.status == 403, await refused.text()
            error = (await refused.json())["error"]
            assert error["code"] == "forbidden"
            assert "admin scope" in error["message"] and "replay" in error["message"]
        dead_ids = [i.id for i in await data.invocations.dead_letters()]
        assert inline in dead_ids and networked in dead_ids  # refused: nothing replayed
        # What an invoke token may submit, it may replay; a function's invocation too.
        for mine in (allowed, function_call):
            replayed = await http.post(f"/v1/invocations/{mine}/replay", headers=APP)
            assert replayed.status == 202, await replayed.text()
        assert (await http.post(f"/v1/invocations/{inline}/replay", headers=READ)).status == 403
        # An admin may replay them.
        for admins_job in (inline, networked):
            replayed = await http.post(f"/v1/invocations/{admins_job}/replay", headers=ADMIN)
            assert replayed.status == 202, await replayed.text()


async def test_an_invoke_tokens_job_has_a_time_budget(redis_url: str) -> None:
    """The audit: an invoke token's job (allowed image, no network) could ask to run for a
    day, the bound admin jobs have; then a review: 900 s per attempt, times 21 attempts. The
    budget counts every attempt; beyond it the spec is valid but needs the admin scope."""
    app = create_app(settings_for(redis_url, job_images=("hodei-test/*",)))
    async with TestClient(TestServer(app)) as http:
        data = app[GATEWAY].data
        assert app[GATEWAY].settings.invoke_job_budget_s == 3600
        for too_long in ({"timeout_s": 3601}, {"timeout_s": 900, "max_retries": 4}):
            refused = await http.post("/v1/jobs", json={**ALLOWED, **too_long}, headers=APP)
            assert refused.status == 403, await refused.text()
            message = (await refused.json())["error"]["message"]
            assert "3600" in message and "invoke_job_budget_s" in message
            assert "max_retries" in message
        await _submit(http, APP, **{**ALLOWED, "timeout_s": 900, "max_retries": 3})
        await _submit(http, APP, **ALLOWED, timeout_s=3600)
        long_one = await _submit(http, ADMIN, **ALLOWED, timeout_s=86_400)
        # Replayed by an invoke token, the admin's day-long job meets the same budget.
        await _dead_letter(data, long_one)
        refused = await http.post(f"/v1/invocations/{long_one}/replay", headers=APP)
        assert refused.status == 403, await refused.text()
        assert "86400" in (await refused.json())["error"]["message"]
        assert long_one in [i.id for i in await data.invocations.dead_letters()]
        assert (await http.post(f"/v1/invocations/{long_one}/replay", headers=ADMIN)).status == 202
    settings = settings_for(redis_url, job_images=("hodei-test/*",), invoke_job_budget_s=30)
    shorter = create_app(settings)
    async with TestClient(TestServer(shorter)) as http:
        refused = await http.post("/v1/jobs", json={**ALLOWED, "timeout_s": 31}, headers=APP)
        assert refused.status == 403 and "30" in (await refused.json())["error"]["message"]
    from_env = GatewaySettings.from_env({"HODEI_INVOKE_JOB_BUDGET_S": "120"})
    assert from_env.invoke_job_budget_s == 120.0
