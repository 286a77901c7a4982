"""Python clients of the gateway: ``HodeiClient`` (blocking) and ``AsyncHodeiClient`` (asyncio).

Each call of the API is described once, in ``hodei.calls``; both clients get every method
from those descriptions (``Calls``) and differ only in how they send a request (``urllib``
or ``aiohttp``), so the two cannot drift apart.
"""

from __future__ import annotations

import http.client
import inspect
import os
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, final

from multidict import CIMultiDict

from hodei.answers import Answer, InvocationPage, InvokeResult, LogEvents
from hodei.calls import Call, Calls, Endpoint
from hodei.calls import Stream as _Stream
from hodei.errors import ApiError, GatewayUnreachable

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "ApiError",
    "AsyncHodeiClient",
    "GatewayUnreachable",
    "HodeiClient",
    "InvocationPage",
    "InvokeResult",
]

P = ParamSpec("P")
T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8080"


def _defaults(url: str | None, token: str | None) -> tuple[str, str]:
    return (
        (url or os.environ.get("HODEI_URL") or DEFAULT_URL).rstrip("/"),
        token if token is not None else os.environ.get("HODEI_API_TOKEN", ""),
    )


def _unreachable(url: str, exc: BaseException) -> GatewayUnreachable:
    reason = getattr(exc, "reason", None) or exc
    return GatewayUnreachable(f"cannot reach the gateway at {url}: {reason}")


def _described(method: Callable[..., Any], build: Callable[..., Call]) -> None:
    method.__name__ = build.__name__.lstrip("_")
    method.__doc__ = build.__doc__
    method.__signature__ = inspect.signature(build)  # type: ignore[attr-defined]


@final
class HodeiClient(Calls):
    """Blocking client (standard library only). ``url`` defaults to ``HODEI_URL`` (else
    http://127.0.0.1:8080), ``token`` to ``HODEI_API_TOKEN``."""

    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 930.0
    ) -> None:
        self.url, self.token = _defaults(url, token)
        self.timeout = timeout

    def __enter__(self) -> HodeiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: every call opens its own connection."""

    def _bind(self, endpoint: Endpoint[P, T]) -> Callable[P, T]:
        def method(*args: P.args, **kwargs: P.kwargs) -> T:
            return endpoint.read(self._send(endpoint.build(*args, **kwargs)))

        _described(method, endpoint.build)
        return method

    def _bind_stream(self, stream: _Stream[P]) -> Callable[P, Iterator[dict[str, Any]]]:
        def method(*args: P.args, **kwargs: P.kwargs) -> Iterator[dict[str, Any]]:
            events = LogEvents()
            for raw in self._lines(stream.build(*args, **kwargs)):
                if (entry := events.feed(raw)) is not None:
                    yield entry
                if events.ended:
                    return

        _described(method, stream.build)
        return method

    def _request(self, call: Call) -> urllib.request.Request:
        headers = dict(call.headers)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return urllib.request.Request(
            call.url(self.url), data=call.body, method=call.method, headers=headers
        )

    def _send(self, call: Call) -> Answer:
        try:
            with urllib.request.urlopen(self._request(call), timeout=self.timeout) as response:
                return Answer(response.status, CIMultiDict(response.headers), response.read())
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, CIMultiDict(exc.headers), exc.read())
        except (OSError, http.client.HTTPException) as exc:
            raise _unreachable(self.url, exc) from None

    def _lines(self, call: Call) -> Iterator[bytes]:
        try:
            response = urllib.request.urlopen(self._request(call), timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise Answer(exc.code, CIMultiDict(exc.headers), exc.read()).error() from None
        except (OSError, http.client.HTTPException) as exc:
            raise _unreachable(self.url, exc) from None
        with response:
            try:
                yield from response
            except (OSError, http.client.HTTPException) as exc:
                raise _unreachable(self.url, exc) from None


@final
class AsyncHodeiClient(Calls):
    """asyncio client (aiohttp). Build it anywhere (its session opens on first use); close
    it with ``await client.close()``, or use ``async with AsyncHodeiClient(url) as client``."""

    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 930.0
    ) -> None:
        self.url, self.token = _defaults(url, token)
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncHodeiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _bind(self, endpoint: Endpoint[P, T]) -> Callable[P, Awaitable[T]]:
        async def method(*args: P.args, **kwargs: P.kwargs) -> T:
            return endpoint.read(await self._send(endpoint.build(*args, **kwargs)))

        _described(method, endpoint.build)
        return method

    def _bind_stream(self, stream: _Stream[P]) -> Callable[P, AsyncIterator[dict[str, Any]]]:
        async def method(*args: P.args, **kwargs: P.kwargs) -> AsyncIterator[dict[str, Any]]:
            events = LogEvents()
            async for raw in self._lines(stream.build(*args, **kwargs)):
                if (entry := events.feed(raw)) is not None:
                    yield entry
                if events.ended:
                    return

        _described(method, stream.build)
        return method

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp  # not for the blocking client and the CLI: it takes a while to import

        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            timeout = aiohttp.ClientTimeout(total=None, sock_read=self.timeout)
            self._session = aiohttp.ClientSession(headers=headers, timeout=timeout)
        return self._session

    async def _send(self, call: Call) -> Answer:
        import aiohttp

        try:
            async with self._open().request(
                call.method, call.url(self.url), data=call.body, headers=call.headers
            ) as response:
                return Answer(response.status, CIMultiDict(response.headers), await response.read())
        except (aiohttp.ClientError, OSError) as exc:
            raise _unreachable(self.url, exc) from None

    async def _lines(self, call: Call) -> AsyncIterator[bytes]:
        import aiohttp

        try:
            async with self._open().request(call.method, call.url(self.url)) as response:
                if response.status != 200:
                    body = await response.read()
                    raise Answer(response.status, CIMultiDict(response.headers), body).error()
                async for raw in response.content:
                    yield raw
        except (aiohttp.ClientError, OSError) as exc:
            raise _unreachable(self.url, exc) from None
