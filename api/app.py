"""The gateway application: ``create_app(settings)`` and ``hodei gateway``."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from hodei import loops
from hodei.api import middleware
from hodei.api.auth import TokenTable
from hodei.api.callback_guard import CallbackPolicy
from hodei.api.callbacks import CallbackDispatcher
from hodei.api.openapi import serve_document
from hodei.api.routes import add_routes
from hodei.api.settings import GatewaySettings
from hodei.api.state import GATEWAY, Gateway
from hodei.api.streams import EventHub
from hodei.api.waiter import Completions
from hodei.consul import ServiceRegistration, consul_address, duration
from hodei.consul import connect as connect_consul
from hodei.errors import ConfigError
from hodei.plugin.data import DataLayer
from hodei.readiness import READINESS, Readiness

log = logging.getLogger(__name__)
SHUTDOWN_S = 5.0  # after SIGTERM, requests still open this long are cut


def create_app(settings: GatewaySettings) -> web.Application:
    tokens = TokenTable.load(settings.api_tokens, settings.api_tokens_file)
    callback_policy = CallbackPolicy.parse(settings.callback_allow)
    app = web.Application(
        client_max_size=settings.max_payload_bytes,
        middlewares=[middleware.errors, middleware.measure, middleware.auth],
    )
    add_routes(app)
    app.router.add_get("/openapi.json", serve_document)

    async def connections(app: web.Application) -> AsyncIterator[None]:
        data = DataLayer(settings, "hodei-gateway")
        app[GATEWAY] = Gateway(
            settings=settings,
            data=data,
            completions=Completions(data),
            hub=EventHub(data, settings.max_streams, settings.max_streams_per_caller),
            tokens=tokens,
            callback_policy=callback_policy,
        )
        yield
        await data.close()

    async def readiness(app: web.Application) -> AsyncIterator[None]:
        address = consul_address(settings.consul_addr)
        client = connect_consul(address, settings.consul_token) if address else None
        app[READINESS] = Readiness(app[GATEWAY].data, client)
        yield
        if client is not None:
            await client.close()

    async def background(app: web.Application) -> AsyncIterator[None]:
        gw = app[GATEWAY]
        dispatcher = CallbackDispatcher(gw.data, gw.completions, settings, callback_policy)
        tasks = [
            asyncio.create_task(gw.completions.run(), name="completions"),
            asyncio.create_task(gw.hub.run(), name="event-hub"),
            asyncio.create_task(dispatcher.run(), name="callbacks"),
        ]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def closing(app: web.Application) -> None:
        # Before aiohttp waits for the open requests: end the long ones now.
        app[GATEWAY].hub.close()
        app[GATEWAY].completions.close()

    app.cleanup_ctx.extend([connections, readiness, background])
    app.on_shutdown.append(closing)
    if settings.consul_register and consul_address(settings.consul_addr):
        app.cleanup_ctx.append(consul_service)
    return app


def gateway_registration(client: Any, settings: GatewaySettings) -> ServiceRegistration:
    address = settings.advertise_address or settings.host
    service_id = f"hodei-gateway-{socket.gethostname()}-{settings.port}"
    scheme = "https" if settings.tls_cert_file else "http"
    return ServiceRegistration(
        client,
        "hodei-gateway",
        service_id,
        {
            "CheckID": f"{service_id}-readyz",
            "Name": "hodei gateway readiness",
            "HTTP": f"{scheme}://{address}:{settings.port}/readyz",
            "Method": "GET",
            # (the check reads readiness only; the certificate may name another address)
            "TLSSkipVerify": scheme == "https",
            "Interval": duration(settings.consul_check_interval_s),
            "Timeout": duration(min(settings.consul_check_interval_s, 5.0)),
            "DeregisterCriticalServiceAfter": duration(settings.consul_deregister_after_s),
        },
        address=address,
        port=settings.port,
    )


async def consul_service(app: web.Application) -> AsyncIterator[None]:
    settings = app[GATEWAY].settings
    client = connect_consul(consul_address(settings.consul_addr), settings.consul_token)
    registration = gateway_registration(client, settings)
    keeper = asyncio.create_task(registration.keep(settings.consul_check_interval_s * 3))
    yield
    keeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await keeper
    await registration.deregister()
    await client.close()


def loopback_only(host: str) -> bool:
    """Whether listening on ``host`` is reachable from this machine alone."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not host:
        return False  # every interface
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return all(ipaddress.ip_address(str(info[4][0])).is_loopback for info in found)


def check_exposure(settings: GatewaySettings) -> None:
    """Refuse to serve anyone who can reach us without tokens, unless told to."""
    if loopback_only(settings.host):
        return
    if TokenTable.load(settings.api_tokens, settings.api_tokens_file).enabled:
        return
    if not settings.insecure:
        raise ConfigError(
            f"refusing to listen on {settings.host or 'every interface'} without API tokens: "
            "set HODEI_API_TOKENS (or --api-tokens-file), listen on 127.0.0.1, or pass "
            "--insecure"
        )
    log.warning(
        "no API tokens and listening on %s (--insecure): whoever reaches this gateway may "
        "manage functions and run one-off jobs",
        settings.host or "every interface",
    )


def tls_context(settings: GatewaySettings) -> ssl.SSLContext | None:
    """HTTPS when the gateway has a certificate and its key; None for plain HTTP."""
    if not settings.tls_cert_file and not settings.tls_key_file:
        return None
    if not settings.tls_cert_file or not settings.tls_key_file:
        raise ConfigError("tls_cert_file and tls_key_file go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls_cert_file/tls_key_file: {exc}") from None
    return context


def serve(settings: GatewaySettings) -> None:
    new_loop = loops.factory(settings.event_loop) or asyncio.new_event_loop
    check_exposure(settings)
    context = tls_context(settings)
    log.info(
        "gateway listening on %s://%s:%d",
        "https" if context else "http",
        settings.host,
        settings.port,
        extra={"http_port": settings.port},
    )
    web.run_app(
        create_app(settings),
        loop=new_loop(),
        host=settings.host,
        port=settings.port,
        ssl_context=context,
        print=None,
        access_log=None,
        shutdown_timeout=SHUTDOWN_S,
    )
