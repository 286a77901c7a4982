"""The Python clients: one API in two flavours, every call through both, the reasons of a
failed invocation, an async client built outside a running loop."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import AgentProcess, start_agent, wait_for
from test_gateway import gateway_settings

from hodei.api.app import create_app
from hodei.calls import Calls
from hodei.client import AsyncHodeiClient, HodeiClient
from hodei.errors import ApiError, GatewayUnreachable
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings


def _methods(client: object) -> dict[str, Any]:
    return {
        name: getattr(client, name)
        for name in dir(client)
        if not name.startswith("_") and callable(getattr(client, name))
    }


def test_both_clients_have_the_same_methods_from_one_description() -> None:
    sync, asynchronous = _methods(HodeiClient("http://x")), _methods(AsyncHodeiClient("http://x"))
    assert sync.keys() == asynchronous.keys()
    described = {name for name in vars(Calls) if not name.startswith("_")}
    assert described <= sync.keys() and len(described) >= 19
    for name in described:
        assert inspect.signature(sync[name]) == inspect.signature(asynchronous[name]), name
        assert sync[name].__doc__ == asynchronous[name].__doc__ and sync[name].__doc__, name
        assert not inspect.iscoroutinefunction(sync[name]), name
        assert inspect.iscoroutinefunction(asynchronous[name]) or inspect.isasyncgenfunction(
            asynchronous[name]
        ), name
    # Nothing hand-written per flavour beyond the transport.
    for cls in (HodeiClient, AsyncHodeiClient):
        own = {n for n in vars(cls) if not n.startswith("_")}
        assert own <= {"close"}, own


def test_the_async_client_is_built_outside_a_running_loop(redis_url: str) -> None:
    client = AsyncHodeiClient("http://127.0.0.1:1", token="t")  # no loop here

    async def use() -> None:
        settings = gateway_settings(ServerSettings(redis_url=redis_url))
        async with TestServer(create_app(settings)) as server:
            client.url = str(server.make_url("")).rstrip("/")
            assert await client.ready() is True
            assert await client.functions() == []
            await client.close()
            # Closed, then used again in another loop: it opens a new session.
            assert await client.queue()
            await client.close()

    asyncio.run(use())
    asyncio.run(use())


async def test_every_call_through_both_flavours(
    settings: ServerSettings, plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    async with TestClient(TestServer(create_app(gateway_settings(settings)))) as http:
        url = str(http.make_url("")).rstrip("/")
        await start_agent(plane, agents, "w1")
        sync = HodeiClient(url)
        async with AsyncHodeiClient(url) as client:
            spec = {"command": ["sh", "-c", "echo said >&2; tr a-z A-Z"], "max_retries": 0}
            stored = await client.deploy("shout", spec)
            assert stored == await asyncio.to_thread(sync.function, "shout")
            assert await client.function("shout") == stored
            assert [f["name"] for f in await asyncio.to_thread(sync.functions)] == ["shout"]

            result = await client.invoke("shout", b"hi")
            same = await asyncio.to_thread(sync.invoke, "shout", b"ho")
            assert (result.output, same.output) == (b"HI", b"HO")
            assert result.status == same.status == "succeeded" and result.exit_code == 0
            assert result.ok and result.finished and result.error_code == ""
            lines = [line["line"] async for line in client.follow_logs(result.invocation_id)]
            assert lines == ["said"]
            assert [
                line["line"]
                for line in await asyncio.to_thread(
                    lambda: list(sync.follow_logs(same.invocation_id))
                )
            ] == ["said"]
            assert [line["line"] for line in await client.logs(same.invocation_id)] == ["said"]
            assert await client.result(result.invocation_id) == b"HI"
            record = await asyncio.to_thread(sync.invocation, result.invocation_id)
            assert record == await client.invocation(result.invocation_id)

            page = await client.invocations(function="shout")
            assert [i["id"] for i in page] == [same.invocation_id, result.invocation_id]
            assert len(await asyncio.to_thread(sync.invocations, None, "succeeded", 1)) == 1

            job = await client.submit_job({"command": ["cat"], "payload": "job input"})
            await wait_for(lambda: _succeeded(client, job), 15)
            assert await asyncio.to_thread(sync.result, job) == b"job input"

            await client.deploy("fails", {"command": ["sh", "-c", "exit 3"], "max_retries": 0})
            failed = await asyncio.to_thread(sync.invoke, "fails")
            assert failed.status_code == 500 and not failed.ok and failed.finished
            assert (failed.status, failed.error_code) == ("failed", "function_failed")
            assert failed.error == "exit code 3" and failed.exit_code == 3
            dead = await client.dead_letters()
            assert [d["id"] for d in dead] == [failed.invocation_id]
            again = await asyncio.to_thread(sync.replay, failed.invocation_id)
            assert again != failed.invocation_id

            await client.deploy("nap", {"command": ["sleep", "30"]})
            waited = await client.invoke("nap", wait=0.1)
            assert waited.status_code == 504 and waited.error_code == "wait_timeout"
            assert not waited.finished
            cancelled = await client.cancel(waited.invocation_id)
            assert cancelled["id"] == waited.invocation_id
            queued = await client.invoke("nap", asynchronous=True)
            assert queued.status_code == 202 and queued.status == "queued"

            workers = await client.workers()
            assert [w["id"] for w in workers] == ["w1"]
            assert (await asyncio.to_thread(sync.worker, "w1"))["id"] == "w1"
            assert (await client.queue())["depth"].keys() >= {"high", "normal", "low"}
            assert (await client.drain("w1"))["state"] == "draining"
            await client.delete("fails")
            with pytest.raises(ApiError) as info:
                await asyncio.to_thread(sync.function, "fails")
            assert (info.value.status, info.value.code) == (404, "not_found")
            assert await asyncio.to_thread(sync.ready) is True


async def _succeeded(client: AsyncHodeiClient, invocation_id: str) -> bool:
    return (await client.invocation(invocation_id))["status"] == "succeeded"


async def test_a_url_where_no_gateway_answers() -> None:
    with pytest.raises(GatewayUnreachable, match="cannot reach the gateway"):
        await AsyncHodeiClient("http://127.0.0.1:1").queue()
    with pytest.raises(GatewayUnreachable, match="cannot reach the gateway"):
        HodeiClient("http://127.0.0.1:1").queue()


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HODEI_URL", "http://gateway.example:9000/")
    monkeypatch.setenv("HODEI_API_TOKEN", "secret")
    client = HodeiClient()
    assert (client.url, client.token) == ("http://gateway.example:9000", "secret")
    assert AsyncHodeiClient(token="").token == ""
    monkeypatch.delenv("HODEI_URL")
    assert HodeiClient().url == "http://127.0.0.1:8080"
