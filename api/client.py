"""Python clients of the gateway: ``HodeiClient`` (blocking) and ``AsyncHodeiClient``.

Both share one description of each call (``Call``) and differ only in how they send it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from hodei.errors import ApiError


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None

    def url(self, base: str) -> str:
        query = f"?{urllib.parse.urlencode(self.query)}" if self.query else ""
        return f"{base.rstrip('/')}{self.path}{query}"


@dataclass(frozen=True)
class InvokeResult:
    """The answer to an invoke: the output, or where to find it later."""

    status_code: int
    invocation_id: str
    status: str
    output: bytes
    headers: dict[str, str]

    @property
    def ok(self) -> bool:
        return self.status_code in (200, 202)


def _json(data: Any) -> bytes:
    return json.dumps(data).encode()


def _invoke_call(
    name: str,
    payload: bytes,
    *,
    asynchronous: bool,
    wait: float | None,
    priority: str | None,
    idempotency_key: str | None,
    callback_url: str | None,
    traceparent: str | None,
) -> Call:
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
    return Call("POST", f"/v1/functions/{name}/invoke", query, headers, payload)


def _invoke_result(status: int, headers: dict[str, str], body: bytes) -> InvokeResult:
    if status not in (200, 202, 500, 504, 409):
        _raise(status, body)
    output = body if status == 200 else b""
    return InvokeResult(
        status,
        headers.get("X-Hodei-Invocation-Id", ""),
        headers.get("X-Hodei-Status", ""),
        output,
        headers,
    )


def _raise(status: int, body: bytes) -> None:
    try:
        data = json.loads(body)
        err = data.get("error", {})
        raise ApiError(status, err.get("code", "error"), err.get("message", ""), data)
    except (ValueError, AttributeError):
        raise ApiError(status, "error", body.decode(errors="replace")[:200], {}) from None


class _LogEvents:
    """Reads the server-sent events of ``logs?follow=true``: log lines, then the end."""

    def __init__(self) -> None:
        self.event = ""
        self.ended = False

    def feed(self, raw: bytes) -> dict[str, Any] | None:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            self.event = line[7:]
        elif line.startswith("data: "):
            if self.event == "log":
                entry: dict[str, Any] = json.loads(line[6:])
                return entry
            self.ended = self.event == "end"
        return None


class _Calls:
    """The API's calls, described once."""

    @staticmethod
    def deploy(name: str, spec: dict[str, Any]) -> Call:
        return Call(
            "PUT",
            f"/v1/functions/{name}",
            headers={"Content-Type": "application/json"},
            body=_json(spec),
        )

    @staticmethod
    def job(spec: dict[str, Any]) -> Call:
        return Call(
            "POST", "/v1/jobs", headers={"Content-Type": "application/json"}, body=_json(spec)
        )

    @staticmethod
    def invocations(function: str | None, status: str | None, limit: int) -> Call:
        query = {"limit": str(limit)}
        if function:
            query["function"] = function
        if status:
            query["status"] = status
        return Call("GET", "/v1/invocations", query)


class HodeiClient:
    """Blocking client (standard library only)."""

    def __init__(
        self, url: str = "http://127.0.0.1:8080", token: str = "", timeout: float = 930.0
    ) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout

    def _send(self, call: Call) -> tuple[int, dict[str, str], bytes]:
        headers = dict(call.headers)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            call.url(self.url), data=call.body, method=call.method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def _json(self, call: Call, expect: tuple[int, ...] = (200,)) -> Any:
        status, _, body = self._send(call)
        if status not in expect:
            _raise(status, body)
        return json.loads(body) if body else None

    def deploy(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._json(_Calls.deploy(name, spec), (200, 201))
        return result

    def functions(self) -> list[dict[str, Any]]:
        return list(self._json(Call("GET", "/v1/functions"))["functions"])

    def delete(self, name: str) -> None:
        self._json(Call("DELETE", f"/v1/functions/{name}"), (204,))

    def invoke(
        self,
        name: str,
        payload: bytes = b"",
        *,
        asynchronous: bool = False,
        wait: float | None = None,
        priority: str | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        traceparent: str | None = None,
    ) -> InvokeResult:
        call = _invoke_call(
            name,
            payload,
            asynchronous=asynchronous,
            wait=wait,
            priority=priority,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            traceparent=traceparent,
        )
        return _invoke_result(*self._send(call))

    def submit_job(self, spec: dict[str, Any]) -> str:
        return str(self._json(_Calls.job(spec), (202,))["id"])

    def invocation(self, invocation_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json(Call("GET", f"/v1/invocations/{invocation_id}"))
        return result

    def result(self, invocation_id: str) -> bytes:
        status, _, body = self._send(Call("GET", f"/v1/invocations/{invocation_id}/result"))
        if status != 200:
            _raise(status, body)
        return body

    def logs(self, invocation_id: str) -> list[dict[str, Any]]:
        return list(self._json(Call("GET", f"/v1/invocations/{invocation_id}/logs"))["lines"])

    def follow_logs(self, invocation_id: str) -> Iterator[dict[str, Any]]:
        """Log lines as they come; ends with the invocation."""
        call = Call("GET", f"/v1/invocations/{invocation_id}/logs", {"follow": "true"})
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = urllib.request.Request(call.url(self.url), headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            _raise(exc.code, exc.read())
            return
        with response:
            events = _LogEvents()
            for raw in response:
                if (entry := events.feed(raw)) is not None:
                    yield entry
                if events.ended:
                    return

    def cancel(self, invocation_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            Call("DELETE", f"/v1/invocations/{invocation_id}"), (202,)
        )
        return result

    def invocations(
        self, function: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        return list(self._json(_Calls.invocations(function, status, limit))["invocations"])

    def workers(self) -> list[dict[str, Any]]:
        return list(self._json(Call("GET", "/v1/workers"))["workers"])

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        call = Call("GET", "/v1/dead-letters", {"limit": str(limit)})
        return list(self._json(call)["invocations"])

    def replay(self, invocation_id: str) -> str:
        call = Call("POST", f"/v1/invocations/{invocation_id}/replay")
        return str(self._json(call, (202,))["id"])

    def drain(self, worker_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json(Call("POST", f"/v1/workers/{worker_id}/drain"), (202,))
        return result

    def queue(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json(Call("GET", "/v1/queue"))
        return result


class AsyncHodeiClient:
    """asyncio client (aiohttp); use as ``async with AsyncHodeiClient(url) as client``."""

    def __init__(self, url: str = "http://127.0.0.1:8080", token: str = "") -> None:
        self.url = url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.session = aiohttp.ClientSession(headers=headers)

    async def __aenter__(self) -> AsyncHodeiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def _send(self, call: Call) -> tuple[int, dict[str, str], bytes]:
        async with self.session.request(
            call.method, call.url(self.url), data=call.body, headers=call.headers
        ) as response:
            return response.status, dict(response.headers), await response.read()

    async def _json(self, call: Call, expect: tuple[int, ...] = (200,)) -> Any:
        status, _, body = await self._send(call)
        if status not in expect:
            _raise(status, body)
        return json.loads(body) if body else None

    async def deploy(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(_Calls.deploy(name, spec), (200, 201))
        return result

    async def invoke(
        self,
        name: str,
        payload: bytes = b"",
        *,
        asynchronous: bool = False,
        wait: float | None = None,
        priority: str | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        traceparent: str | None = None,
    ) -> InvokeResult:
        call = _invoke_call(
            name,
            payload,
            asynchronous=asynchronous,
            wait=wait,
            priority=priority,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            traceparent=traceparent,
        )
        return _invoke_result(*await self._send(call))

    async def submit_job(self, spec: dict[str, Any]) -> str:
        return str((await self._json(_Calls.job(spec), (202,)))["id"])

    async def invocation(self, invocation_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(Call("GET", f"/v1/invocations/{invocation_id}"))
        return result

    async def result(self, invocation_id: str) -> bytes:
        status, _, body = await self._send(Call("GET", f"/v1/invocations/{invocation_id}/result"))
        if status != 200:
            _raise(status, body)
        return body

    async def cancel(self, invocation_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(
            Call("DELETE", f"/v1/invocations/{invocation_id}"), (202,)
        )
        return result

    async def invocations(
        self, function: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        return list((await self._json(_Calls.invocations(function, status, limit)))["invocations"])

    async def follow_logs(self, invocation_id: str) -> AsyncIterator[dict[str, Any]]:
        call = Call("GET", f"/v1/invocations/{invocation_id}/logs", {"follow": "true"})
        async with self.session.get(call.url(self.url)) as response:
            if response.status != 200:
                _raise(response.status, await response.read())
            events = _LogEvents()
            async for raw in response.content:
                if (entry := events.feed(raw)) is not None:
                    yield entry
                if events.ended:
                    return

    async def workers(self) -> list[dict[str, Any]]:
        return list((await self._json(Call("GET", "/v1/workers")))["workers"])

    async def queue(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(Call("GET", "/v1/queue"))
        return result
