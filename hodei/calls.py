"""Every call of the gateway's API, described once: how to build the request, and which
reader of ``hodei.answers`` reads the answer. ``HodeiClient`` and ``AsyncHodeiClient``
(``hodei.client``) inherit these descriptions as methods; each only says how it sends a
request.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from hodei.answers import (
    Answer,
    read_bytes,
    read_id,
    read_invoke_result,
    read_list,
    read_nothing,
    read_object,
    read_page,
    read_ready,
)

if TYPE_CHECKING:
    from hodei.client import AsyncHodeiClient, HodeiClient

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One HTTP request to the gateway."""

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None

    def url(self, base: str) -> str:
        query = f"?{urllib.parse.urlencode(self.query)}" if self.query else ""
        return f"{base.rstrip('/')}{self.path}{query}"


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


class Endpoint(Generic[P, T]):
    """A described call: ``build`` takes the method's arguments and makes the request,
    ``read`` turns the answer into the method's result (or raises ``ApiError``)."""

    def __init__(self, build: Callable[P, Call], read: Callable[[Answer], T]) -> None:
        self.build = build
        self.read = read
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, client: None, owner: type) -> Endpoint[P, T]: ...
    @overload
    def __get__(self, client: HodeiClient, owner: type) -> Callable[P, T]: ...
    @overload
    def __get__(self, client: AsyncHodeiClient, owner: type) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, client: Any, owner: type) -> Any:
        if client is None:
            return self
        return client._bind(self)


class Stream(Generic[P]):
    """A described streaming call: server-sent log events, read line by line."""

    def __init__(self, build: Callable[P, Call]) -> None:
        self.build = build
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, client: None, owner: type) -> Stream[P]: ...
    @overload
    def __get__(
        self, client: HodeiClient, owner: type
    ) -> Callable[P, Iterator[dict[str, Any]]]: ...
    @overload
    def __get__(
        self, client: AsyncHodeiClient, owner: type
    ) -> Callable[P, AsyncIterator[dict[str, Any]]]: ...
    def __get__(self, client: Any, owner: type) -> Any:
        if client is None:
            return self
        return client._bind_stream(self)


def _body(data: Any) -> bytes:
    return json.dumps(data).encode()


JSON = {"Content-Type": "application/json"}


def _deploy(name: str, spec: Mapping[str, Any]) -> Call:
    """Create or replace the function ``name``; returns the stored spec."""
    return Call("PUT", f"/v1/functions/{_quote(name)}", headers=JSON, body=_body(spec))


def _function(name: str) -> Call:
    """The spec of the function ``name``."""
    return Call("GET", f"/v1/functions/{_quote(name)}")


def _functions() -> Call:
    """Every function's spec, by name."""
    return Call("GET", "/v1/functions")


def _delete(name: str) -> Call:
    """Delete the function ``name``."""
    return Call("DELETE", f"/v1/functions/{_quote(name)}")


def _invoke(
    name: str,
    payload: bytes = b"",
    *,
    asynchronous: bool = False,
    wait: float | None = None,
    priority: str | None = None,
    idempotency_key: str | None = None,
    callback_url: str | None = None,
    traceparent: str | None = None,
) -> Call:
    """Invoke ``name`` with ``payload`` as its stdin: waits for the output (at most
    ``wait`` seconds), or returns at once with the invocation id when ``asynchronous``."""
    query = {"async": "true"} if asynchronous else {}
    if wait is not None:
        query["wait"] = f"{wait:g}"
    headers = {"Content-Type": "application/octet-stream"}
    for header, value in (
        ("X-Hodei-Priority", priority),
        ("Idempotency-Key", idempotency_key),
        ("X-Callback-Url", callback_url),
        ("traceparent", traceparent),
    ):
        if value:
            headers[header] = value
    return Call("POST", f"/v1/functions/{_quote(name)}/invoke", query, headers, payload)


def _submit_job(spec: Mapping[str, Any]) -> Call:
    """Run a one-off job from an inline spec (``command`` or ``image``, ``payload``...);
    returns its invocation id."""
    return Call("POST", "/v1/jobs", headers=JSON, body=_body(spec))


def _invocation(invocation_id: str) -> Call:
    """The record of an invocation (status, attempt, worker, exit code, error...)."""
    return Call("GET", f"/v1/invocations/{_quote(invocation_id)}")


def _invocations(
    function: str | None = None,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Call:
    """Recent invocations, newest first, optionally of one function or in one status."""
    query = {"limit": str(limit)}
    for key, value in (("function", function), ("status", status), ("cursor", cursor)):
        if value:
            query[key] = value
    return Call("GET", "/v1/invocations", query)


def _result(invocation_id: str) -> Call:
    """The output (stdout) of a finished invocation; ``ApiError`` 409 while it runs."""
    return Call("GET", f"/v1/invocations/{_quote(invocation_id)}/result")


def _logs(invocation_id: str, offset: int = 0, limit: int | None = None) -> Call:
    """The log lines (stderr) of an invocation so far, from line ``offset``."""
    query = {"offset": str(offset)} if offset else {}
    if limit is not None:
        query["limit"] = str(limit)
    return Call("GET", f"/v1/invocations/{_quote(invocation_id)}/logs", query)


def _follow_logs(invocation_id: str) -> Call:
    """Log lines as they come, until the invocation ends."""
    return Call("GET", f"/v1/invocations/{_quote(invocation_id)}/logs", {"follow": "true"})


def _cancel(invocation_id: str) -> Call:
    """Cancel an invocation: a queued one never runs, a running one is killed."""
    return Call("DELETE", f"/v1/invocations/{_quote(invocation_id)}")


def _dead_letters(limit: int = 100) -> Call:
    """Failed invocations whose retries ran out, newest first."""
    return Call("GET", "/v1/dead-letters", {"limit": str(limit)})


def _replay(invocation_id: str) -> Call:
    """Run a dead-lettered invocation again, as a new invocation; returns the new id."""
    return Call("POST", f"/v1/invocations/{_quote(invocation_id)}/replay")


def _workers() -> Call:
    """The fleet: every worker with its capacity, reservations and state."""
    return Call("GET", "/v1/workers")


def _worker(worker_id: str) -> Call:
    """One worker, with the invocations it runs."""
    return Call("GET", f"/v1/workers/{_quote(worker_id)}")


def _drain(worker_id: str) -> Call:
    """Drain a worker: it takes no new work; what runs finishes."""
    return Call("POST", f"/v1/workers/{_quote(worker_id)}/drain")


def _queue() -> Call:
    """Queue depth per priority, oldest age, pending reasons."""
    return Call("GET", "/v1/queue")


def _ready_call() -> Call:
    """Whether the gateway is ready (its Redis answers)."""
    return Call("GET", "/readyz")


class Calls:
    """The API's methods, shared by both clients."""

    deploy = Endpoint(_deploy, read_object(200, 201))
    function = Endpoint(_function, read_object(200))
    functions = Endpoint(_functions, read_list("functions"))
    delete = Endpoint(_delete, read_nothing)
    invoke = Endpoint(_invoke, read_invoke_result)
    submit_job = Endpoint(_submit_job, read_id)
    invocation = Endpoint(_invocation, read_object(200))
    invocations = Endpoint(_invocations, read_page)
    result = Endpoint(_result, read_bytes)
    logs = Endpoint(_logs, read_list("lines"))
    follow_logs = Stream(_follow_logs)
    cancel = Endpoint(_cancel, read_object(202))
    dead_letters = Endpoint(_dead_letters, read_list("invocations"))
    replay = Endpoint(_replay, read_id)
    workers = Endpoint(_workers, read_list("workers"))
    worker = Endpoint(_worker, read_object(200))
    drain = Endpoint(_drain, read_object(202))
    queue = Endpoint(_queue, read_object(200))
    ready = Endpoint(_ready_call, read_ready)
