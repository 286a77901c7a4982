"""Callbacks cannot reach inside (issue 12): the audit's SSRF through ``X-Callback-Url`` —
loopback and private addresses were accepted and redirects followed, the body re-POSTed."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestClient, TestServer
from conftest import wait_for

from hodei.api.app import create_app
from hodei.api.callback_guard import DELIVERY, CallbackPolicy, Delivery, kind_of
from hodei.api.settings import GatewaySettings
from hodei.api.state import GATEWAY
from hodei.errors import CallbackRefused, ConfigError

REFUSED = {
    "127.0.0.1": "a loopback address",
    "127.8.9.10": "a loopback address",
    "::1": "a loopback address",
    "10.0.0.1": "a private address",
    "172.16.5.4": "a private address",
    "192.168.1.1": "a private address",
    "fc00::1": "a private address",
    "fd12:3456::1": "a private address",
    "169.254.1.1": "a link-local address",
    "fe80::1": "a link-local address",
    "169.254.169.254": "a cloud metadata address",
    "fd00:ec2::254": "a cloud metadata address",
    "224.0.0.1": "a multicast address",
    "ff02::1": "a multicast address",
    "0.0.0.0": "the unspecified address",
    "::": "the unspecified address",
    "100.64.0.1": "not a public address",  # carrier-grade NAT
    "::ffff:127.0.0.1": "a loopback address",  # IPv4-mapped
    "2002:7f00:1::": "a loopback address",  # 6to4 of 127.0.0.1
    "64:ff9b::a9fe:a9fe": "a cloud metadata address",  # NAT64 of 169.254.169.254
}


def test_inside_addresses_are_refused_public_ones_pass() -> None:
    policy = CallbackPolicy()
    for address, kind in REFUSED.items():
        reason = policy.refusal(address)
        assert reason is not None and reason.endswith(kind), (address, reason)
    for public in ("93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"):
        assert policy.refusal(public) is None, public


def test_the_allow_list_opens_networks_and_hosts_never_metadata() -> None:
    policy = CallbackPolicy.parse(["127.0.0.0/8", "::1", "10.1.0.0/16", "Hooks.Internal.", ""])
    assert policy.refusal("127.0.0.1") is None and policy.refusal("::1") is None
    assert policy.refusal("10.1.2.3") is None
    assert policy.refusal("10.2.0.1") == "10.2.0.1 is a private address"
    assert policy.allows_host("hooks.internal") and not policy.allows_host("other.internal")
    assert policy.refusal("192.168.0.1", host_allowed=True) is None
    everything = CallbackPolicy.parse(["0.0.0.0/0", "::/0"])
    for metadata in ("169.254.169.254", "fd00:ec2::254"):
        assert everything.refusal(metadata) is not None
        assert policy.refusal(metadata, host_allowed=True) is not None
    with pytest.raises(ConfigError):
        CallbackPolicy.parse(["not a host/or network"])


class StaticResolver(AbstractResolver):
    """DNS as an attacker's server answers it: the name leads where they like."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        address = self.answers[host]
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        pass


async def test_a_name_resolving_inside_is_refused_at_connect() -> None:
    """The check is on the address connected to, after DNS: a name that leads to a
    private address (or rebinds to loopback after a first, public answer) is refused."""
    hits: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    async with TestServer(receiver, host="127.0.0.1") as server:
        resolver = StaticResolver({"internal.example": "10.0.0.7", "rebind.example": "127.0.0.1"})
        policy = CallbackPolicy()
        async with aiohttp.ClientSession(connector=policy.connector(resolver)) as session:
            for name, reason in (
                ("internal.example", "10.0.0.7 is a private address"),
                ("rebind.example", "127.0.0.1 is a loopback address"),
            ):
                delivery = Delivery()
                DELIVERY.set(delivery)
                with pytest.raises(aiohttp.ClientConnectorError) as caught:
                    await session.post(f"http://{name}:{server.port}/hook", data=b"x")
                assert isinstance(caught.value.os_error, CallbackRefused)
                assert delivery.only_refused and delivery.refused == [reason]
        assert resolver.asked == ["internal.example", "rebind.example"]
        # The same receiver through a plain session: it is there, only the policy refused.
        async with aiohttp.ClientSession() as plain:
            assert (await plain.post(f"http://127.0.0.1:{server.port}/hook")).status == 204
    assert hits == ["/hook"]


Client = TestClient[web.Request, web.Application]


class Receiver:
    """A callback receiver on loopback: /hook answers 204, /moved redirects to /stolen."""

    def __init__(self) -> None:
        self.hits: list[tuple[str, bytes]] = []
        app = web.Application()
        app.router.add_post("/hook", self.record)
        app.router.add_post("/stolen", self.record)
        app.router.add_post("/moved", self.moved)
        self.server = TestServer(app, host="127.0.0.1")

    async def record(self, request: web.Request) -> web.Response:
        self.hits.append((request.path, await request.read()))
        return web.Response(status=204)

    async def moved(self, request: web.Request) -> web.Response:
        self.hits.append((request.path, await request.read()))
        raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{self.server.port}/stolen")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.server.start_server()
    yield r
    await r.server.close()


async def _called_back(http: Client, url: str) -> tuple[str, str]:
    """Deploy, submit with a callback, cancel (a final status: the callback is due); the
    delivery's recorded outcome and the invocation id."""
    created = await http.put("/v1/functions/f", json={"command": ["cat"]})
    assert created.status in (200, 201)
    accepted = await http.post(
        "/v1/functions/f/invoke?async=true", data=b"secret", headers={"X-Callback-Url": url}
    )
    assert accepted.status == 202, await accepted.text()
    invocation_id = (await accepted.json())["id"]
    assert (await http.delete(f"/v1/invocations/{invocation_id}")).status == 202
    data = http.server.app[GATEWAY].data

    async def outcome() -> str:
        raw = await data.redis.hget(data.keys.invocation(invocation_id), "callback_status")
        return raw.decode() if raw else ""

    return await wait_for(outcome, 15), invocation_id


async def _gateway(redis_url: str, **settings: Any) -> Client:
    client: Client = TestClient(TestServer(create_app(GatewaySettings(redis_url, **settings))))
    await client.start_server()
    return client


async def test_a_callback_to_a_name_for_loopback_is_refused_and_recorded(
    redis_url: str, receiver: Receiver
) -> None:
    http = await _gateway(redis_url)
    try:
        # A name: accepted, then resolved at delivery and refused there.
        outcome, _ = await _called_back(http, f"http://localhost:{receiver.server.port}/hook")
        assert outcome.startswith("refused: ") and "is a loopback address" in outcome, outcome
    finally:
        await http.close()
    assert receiver.hits == []


async def test_an_inside_address_written_in_the_url_is_refused_at_submit(
    redis_url: str, receiver: Receiver
) -> None:
    http = await _gateway(redis_url)
    try:
        created = await http.put("/v1/functions/f", json={"command": ["cat"]})
        assert created.status in (200, 201)
        for url, reason in (
            (f"http://127.0.0.1:{receiver.server.port}/hook", "127.0.0.1 is a loopback address"),
            ("http://[::ffff:10.1.2.3]/hook", "(10.1.2.3) is a private address"),
            ("https://169.254.169.254/latest", "169.254.169.254 is a cloud metadata address"),
            ("http://[fe80::1]:8080/x", "fe80::1 is a link-local address"),
        ):
            answer = await http.post(
                "/v1/functions/f/invoke?async=true", data=b"x", headers={"X-Callback-Url": url}
            )
            assert answer.status == 400, (url, answer.status)
            message = (await answer.json())["error"]["message"]
            assert reason in message, message
        listed = await http.get("/v1/invocations?function=f")
        assert (await listed.json())["invocations"] == []  # nothing was enqueued
    finally:
        await http.close()
    assert receiver.hits == []


async def test_the_allow_list_lets_a_loopback_receiver_through(
    redis_url: str, receiver: Receiver
) -> None:
    for allow, host in ((("127.0.0.0/8",), "127.0.0.1"), (("localhost",), "localhost")):
        http = await _gateway(redis_url, callback_allow=allow)
        try:
            outcome, _ = await _called_back(http, f"http://{host}:{receiver.server.port}/hook")
        finally:
            await http.close()
        assert outcome == "delivered"
    assert [path for path, _ in receiver.hits] == ["/hook", "/hook"]


async def test_a_redirect_is_not_followed(redis_url: str, receiver: Receiver) -> None:
    http = await _gateway(redis_url, callback_allow=("127.0.0.1",))
    try:
        outcome, _ = await _called_back(http, f"http://127.0.0.1:{receiver.server.port}/moved")
    finally:
        await http.close()
    assert outcome == "HTTP 307: redirects are not followed"
    assert [path for path, _ in receiver.hits] == ["/moved"]  # never /stolen


@pytest.mark.parametrize(
    "address, kind",
    [
        # An audit: these were taken for public addresses (Python's ipaddress calls them
        # global), though each names an inside address or a network that is not public.
        ("::127.0.0.1", "a loopback address"),  # IPv4-compatible (deprecated)
        ("::ffff:0:10.0.0.1", "a private address"),  # IPv4-translated (SIIT)
        ("64:ff9b:1::7f00:1", "not a public address"),  # NAT64 for local use
        ("fec0::1", "not a public address"),  # site-local
        ("8.8.8.8", None),
        ("64:ff9b::808:808", None),  # the well-known NAT64 prefix, to a public address
        ("2606:4700:4700::1111", None),
    ],
)
def test_addresses_that_carry_or_name_an_inside_network_are_refused(
    address: str, kind: str | None
) -> None:
    assert kind_of(ipaddress.ip_address(address)) == kind
