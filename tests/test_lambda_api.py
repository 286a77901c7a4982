"""The Runtime API endpoint of one instance, spoken to over HTTP as a runtime client would."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from hodei.agent.lambda_api import Invocation, RuntimeEndpoint, error_of, event_of, trace_id

NEXT = "/2018-06-01/runtime/invocation/next"
HEADERS = (
    "Content-Type",
    "Lambda-Runtime-Aws-Request-Id",
    "Lambda-Runtime-Deadline-Ms",
    "Lambda-Runtime-Invoked-Function-Arn",
    "Lambda-Runtime-Trace-Id",
)


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


@pytest.fixture
async def endpoint() -> AsyncIterator[RuntimeEndpoint]:
    sock = listening()
    ep = RuntimeEndpoint("{}:{}".format(*sock.getsockname()), "arn:hodei:lambda:r:0:function:f", 10)
    await ep.serve(sock)
    yield ep
    await ep.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # One connection, kept alive between requests, as the runtime clients do.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        yield session


async def test_next_waits_for_work_and_answers_with_every_header(
    endpoint: RuntimeEndpoint, http: aiohttp.ClientSession
) -> None:
    base = f"http://{endpoint.address}"
    pending = asyncio.create_task(http.get(base + NEXT))
    await asyncio.wait_for(endpoint.ready, 5)
    assert not pending.done()  # a long poll: nothing to hand out yet
    invocation = Invocation("inv-1", b'{"a": 1}', 1234, "00-" + "1" * 32 + "-" + "2" * 16 + "-00")
    endpoint.offer(invocation)
    answer = await asyncio.wait_for(pending, 5)
    assert answer.status == 200 and await answer.read() == b'{"a": 1}'
    assert all(answer.headers.get(h) for h in HEADERS)
    assert answer.headers["Lambda-Runtime-Aws-Request-Id"] == "inv-1"
    assert answer.headers["Lambda-Runtime-Deadline-Ms"] == "1234"
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Lambda-Runtime-Trace-Id"].endswith(";Sampled=0")

    wrong = await http.post(f"{base}/2018-06-01/runtime/invocation/other/response", data=b"x")
    assert wrong.status == 400 and not invocation.reply.done()
    posted = await http.post(
        f"{base}/2018-06-01/runtime/invocation/inv-1/response", data=b"0123456789abc"
    )
    assert posted.status == 202
    reply = await asyncio.wait_for(invocation.reply, 5)
    assert reply.ok and reply.body == b"0123456789" and reply.truncated  # the output cap
    again = await http.post(f"{base}/2018-06-01/runtime/invocation/inv-1/response", data=b"x")
    assert again.status == 400  # answered once only
    assert (await http.get(base + "/2018-06-01/nothing")).status == 404


async def test_errors_and_init_errors(
    endpoint: RuntimeEndpoint, http: aiohttp.ClientSession
) -> None:
    base = f"http://{endpoint.address}/2018-06-01/runtime"
    invocation = Invocation("e", b"not json", 1, "")
    endpoint.offer(invocation)
    answer = await http.get(base + "/invocation/next")
    assert answer.headers["Content-Type"] == "application/octet-stream"
    assert await answer.read() == b"not json"
    posted = await http.post(
        base + "/invocation/e/error",
        json={"errorMessage": "bad input", "errorType": "ValueError", "stackTrace": ["x"]},
        headers={"Lambda-Runtime-Function-Error-Type": "Unhandled"},
    )
    assert posted.status == 202
    reply = await invocation.reply
    assert not reply.ok and reply.error == "ValueError: bad input"

    init = await http.post(
        base + "/init/error",
        data=b"{}",
        headers={"Lambda-Runtime-Function-Error-Type": "Runtime.NoHandler"},
    )
    assert init.status == 202 and await endpoint.init_error == "Runtime.NoHandler"


async def test_asking_for_more_without_answering_fails_the_open_invocation(
    endpoint: RuntimeEndpoint, http: aiohttp.ClientSession
) -> None:
    base = f"http://{endpoint.address}"
    first = Invocation("one", b"{}", 1, "")
    endpoint.offer(first)
    await (await http.get(base + NEXT)).read()
    pending = asyncio.create_task(http.get(base + NEXT))
    reply = await asyncio.wait_for(first.reply, 5)
    assert not reply.ok and "without answering" in reply.error
    pending.cancel()


async def test_a_stranger_gets_nothing(http: aiohttp.ClientSession) -> None:
    async def only_me(peer: tuple[str, int]) -> bool:
        return peer[0] == "10.9.9.9"

    sock = listening()
    ep = RuntimeEndpoint("{}:{}".format(*sock.getsockname()), "arn", 100, peer_allowed=only_me)
    await ep.serve(sock)
    try:
        invocation = Invocation("secret", b"{}", 1, "")
        ep.offer(invocation)
        answer = await http.get(f"http://{ep.address}{NEXT}")
        assert answer.status == 403 and b"secret" not in await answer.read()
        assert not ep.ready.done() and not invocation.reply.done()
    finally:
        await ep.close()


def test_trace_ids_events_and_error_texts() -> None:
    assert trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") == (
        "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1"
    )
    made = trace_id("")
    assert made.startswith("Root=1-") and made != trace_id("")
    assert event_of(b"") == (b"{}", "application/json")
    assert event_of(b" [1, 2] ") == (b" [1, 2] ", "application/json")
    assert event_of(b"\xff\x00") == (b"\xff\x00", "application/octet-stream")
    assert error_of(b'{"errorMessage": "m"}', "Header.Type") == "Header.Type: m"
    assert error_of(b"plain words", "") == "plain words"
    assert error_of(b"", "") == "unknown error"
    assert len(error_of(b'{"errorMessage": "' + b"x" * 10000 + b'"}', "T")) == 4096


async def test_the_result_goes_on_before_the_runtime_hears_back(
    endpoint: RuntimeEndpoint, http: aiohttp.ClientSession
) -> None:
    """The agent hands a response to its stream before it answers the runtime's POST: on
    a busy agent the 202 and the runtime's next `next` would otherwise go first (about
    0.2 ms of every warm call, measured with tcpdump). The consumer is shaped like the
    agent's: a wait on the reply among other futures, then a queue to a writer task."""
    order: list[str] = []
    outbox: asyncio.Queue[bytes] = asyncio.Queue()
    invocation = Invocation("inv-1", b"{}", 1234, "")

    async def consume() -> None:
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await asyncio.wait({invocation.reply, never}, return_when=asyncio.FIRST_COMPLETED)
        outbox.put_nowait(invocation.reply.result().body)

    async def write() -> None:
        await outbox.get()
        order.append("result sent")

    tasks = [asyncio.create_task(consume()), asyncio.create_task(write())]
    base = f"http://{endpoint.address}"
    pending = asyncio.create_task(http.get(base + NEXT))
    endpoint.offer(invocation)
    await (await asyncio.wait_for(pending, 5)).read()
    async with http.post(f"{base}/2018-06-01/runtime/invocation/inv-1/response", data=b"1") as r:
        assert r.status == 202
        order.append("runtime answered")
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == ["result sent", "runtime answered"]
