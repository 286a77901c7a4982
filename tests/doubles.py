"""Serving the in-process doubles (Consul, Nomad, an OTLP collector) on a free port."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web


@asynccontextmanager
async def served(app: web.Application, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 and a free port (over TLS with ``tls``); yields its base
    URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def header_recorder(name: str, seen: list[str]) -> Any:
    """A middleware that notes every value of the header ``name`` (an API token) and, over
    TLS, the subject of the client certificate the caller presented."""

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        if value := request.headers.get(name):
            seen.append(value)
        transport = request.transport
        peer = transport.get_extra_info("peercert") if transport else None
        if peer:
            subject = dict(item for rdn in peer.get("subject", ()) for item in rdn)
            seen.append(f"client-cert:{subject.get('commonName', '')}")
        response: web.StreamResponse = await handler(request)
        return response

    return record
