"""Least privilege at the gateway (issue 12), each test written as the attack: one-off jobs
need admin unless their image is allow-listed, idempotency keys belong to their caller."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import ROOT, free_port, wait_for
from private_ca import make_ca

from hodei.api.app import create_app
from hodei.api.settings import GatewaySettings
from hodei.api.state import GATEWAY
from hodei.dev_stack import listening

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


async def test_metrics_can_require_a_token(redis_url: str) -> None:
    """The audit: /metrics was open to anyone who reached the gateway."""
    async with TestClient(TestServer(create_app(settings_for(redis_url)))) as http:
        assert (await http.get("/readyz")).status == 200
        opened = await http.get("/metrics")  # open unless a token is set
        assert opened.status == 200 and await opened.text()
    app = create_app(settings_for(redis_url, metrics_token="scrape-me"))
    async with TestClient(TestServer(app)) as http:
        assert (await http.get("/readyz")).status == 200
        for headers in ({}, {"Authorization": "Bearer nope"}, APP, {"Authorization": "scrape-me"}):
            refused = await http.get("/metrics", headers=headers)
            assert refused.status == 401, headers
            assert refused.headers["WWW-Authenticate"] == "Bearer"
        for headers in ({"Authorization": "Bearer scrape-me"}, READ, ADMIN):
            scraped = await http.get("/metrics", headers=headers)
            assert scraped.status == 200, headers
            assert "hodei_gateway_requests_in_flight" in await scraped.text()
        # The metrics token is no API token.
        scrape = {"Authorization": "Bearer scrape-me"}
        assert (await http.get("/v1/functions", headers=scrape)).status == 401
        assert (await http.get("/healthz")).status == 200


def _gateway_process(redis_url: str, host: str, *extra: str, tokens: str = "") -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HODEI_", "CONSUL_"))}
    if tokens:
        env["HODEI_API_TOKENS"] = tokens
    port = free_port()
    command = [sys.executable, "-m", "hodei.cli", "gateway", "--host", host, "--port", str(port)]
    proc = subprocess.Popen(
        [*command, "--redis-url", redis_url, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    return proc, port


async def test_no_tokens_no_listening_beyond_loopback(redis_url: str) -> None:
    """The audit: no tokens (Terraform's default) while the gateway bound 0.0.0.0."""
    proc, port = _gateway_process(redis_url, "0.0.0.0")
    try:
        await wait_for(lambda: proc.poll() is not None or listening(port), 60)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2, stderr.decode()
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hodei: refusing to listen on 0.0.0.0")
    assert "--insecure" in lines[0]
    for host, extra, tokens in (
        ("0.0.0.0", ("--insecure",), ""),
        ("0.0.0.0", (), "t:read"),
        ("127.0.0.1", (), ""),
    ):
        proc, port = _gateway_process(redis_url, host, *extra, tokens=tokens)
        try:
            await wait_for(lambda p=port, proc=proc: proc.poll() is not None or listening(p), 60)
            assert proc.poll() is None, proc.communicate()[1].decode()
        finally:
            proc.kill()  # what is tested is that it listens, not how it stops
            proc.communicate(timeout=30)


async def test_a_malformed_event_id_is_a_400_not_a_broken_stream(http: Client) -> None:
    """int() reads "1_000", "١٢" and 30 digits: Redis then refused the id, and the stream
    answered 200 with an error event instead of a 400."""
    for since in ("1_000", "\u0661\u0662-1", "9" * 30, "1-" + "9" * 25, "+5", " 5"):
        response = await http.get("/v1/events", params={"since": since}, headers=READ)
        assert response.status == 400, since
        if since.strip() == since:  # (a header's value is read without its blanks)
            response = await http.get("/v1/events", headers={**READ, "Last-Event-ID": since})
            assert response.status == 400, since


async def test_the_gateway_serves_https_with_its_certificate(redis_url: str, tmp_path: Any) -> None:
    pki = make_ca(tmp_path)
    half, _ = _gateway_process(redis_url, "127.0.0.1", "--tls-cert-file", str(pki.server_cert))
    _, stderr = half.communicate(timeout=60)
    assert half.returncode == 2 and "tls_cert_file and tls_key_file go together" in stderr.decode()
    tls = ("--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key))
    proc, port = _gateway_process(redis_url, "127.0.0.1", *tls)
    try:
        await wait_for(lambda: proc.poll() is not None or listening(port), 60)
        assert proc.poll() is None, proc.communicate()[1].decode()
        trusted = ssl.create_default_context(cafile=str(pki.ca))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{port}/healthz", ssl=trusted) as ok:
                assert ok.status == 200
            with pytest.raises(aiohttp.ClientError):  # no plain HTTP beside it
                async with session.get(f"http://127.0.0.1:{port}/healthz") as plain:
                    await plain.read()
    finally:
        proc.kill()
        proc.communicate(timeout=30)


async def test_job_names_make_no_metric_series(http: Client) -> None:
    """The audit: each one-off job's name (the caller's choice) became a label value, so a
    caller could grow /metrics without bound."""

    async def accepted_jobs() -> float:
        text = await (await http.get("/metrics")).text()
        for line in text.splitlines():
            if line.startswith(
                'hodei_gateway_invocations_total{function="(job)",status="accepted"}'
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = await accepted_jobs()
    names = [f"series-bomb-{i}" for i in range(30)]
    for name in names:
        job = {"name": name, "command": ["true"]}
        assert (await http.post("/v1/jobs", json=job, headers=ADMIN)).status == 202
    text = await (await http.get("/metrics")).text()
    assert not any(name in text for name in names)
    assert await accepted_jobs() == before + len(names)


async def test_a_job_cannot_take_a_registered_functions_name(redis_url: str) -> None:
    """The audit: an invoke token's job named like a registered function counted against the
    function's concurrency (its callers got 429), showed in its history as one of its
    invocations, and replaced its warm instances with the job's revision."""
    app = create_app(settings_for(redis_url, job_images=("hodei-test/*",)))
    async with TestClient(TestServer(app)) as http:
        spec = {"command": ["cat"], "concurrency": 1}
        assert (await http.put("/v1/functions/limited", json=spec, headers=ADMIN)).status == 201
        job = {"name": "limited", "runtime": "docker", "image": "hodei-test/busybox:latest"}
        for caller in (APP, ADMIN):
            refused = await http.post("/v1/jobs", json=job, headers=caller)
            assert refused.status == 409, await refused.text()
            assert "limited" in (await refused.json())["error"]["message"]
        # Nothing was recorded (not even the job's spec: a review), so the function's one
        # slot is still free.
        listed = await (await http.get("/v1/invocations", headers=ADMIN)).json()
        assert listed["invocations"] == []
        data = app[GATEWAY].data
        assert not [k async for k in data.redis.scan_iter(data.keys.revision("limited", "j*"))]
        invoked = await http.post("/v1/functions/limited/invoke?async=true", headers=APP)
        assert invoked.status == 202, await invoked.text()
        # Under a name of its own, the job runs; the record says it is a job.
        accepted = await http.post("/v1/jobs", json={**job, "name": "adhoc"}, headers=APP)
        assert accepted.status == 202, await accepted.text()
        record = await (await http.get(accepted.headers["Location"], headers=ADMIN)).json()
        assert record["function"] == "adhoc" and record["job"] is True
        function_call = await (await http.get(invoked.headers["Location"], headers=ADMIN)).json()
        assert function_call["job"] is False
