"""Serving the in-process doubles (Consul, Nomad, an OTLP collector) on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web


@asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 and a free port; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def header_recorder(name: str, seen: list[str]) -> Any:
    """A middleware that notes every value of the header ``name`` (an API token)."""

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        if value := request.headers.get(name):
            seen.append(value)
        response: web.StreamResponse = await handler(request)
        return response

    return record
