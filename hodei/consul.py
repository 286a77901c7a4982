"""What every process shares about Consul: the clients, configured as Consul's own CLI is,
and a service registration that heals when Consul forgets it.

Consul is optional. It is on when an address is configured (``consul_addr`` or the
standard ``CONSUL_HTTP_ADDR``). The standard variables are honoured as the ``consul`` CLI
honours them (https://developer.hashicorp.com/consul/commands#environment-variables):
``CONSUL_HTTP_ADDR`` (``host:port`` or ``http(s)://host:port``), ``CONSUL_HTTP_SSL``,
``CONSUL_HTTP_SSL_VERIFY``, ``CONSUL_CACERT``, ``CONSUL_CAPATH``, ``CONSUL_CLIENT_CERT``,
``CONSUL_CLIENT_KEY``, ``CONSUL_HTTP_TOKEN`` and ``CONSUL_HTTP_TOKEN_FILE``; an explicit
``consul_token`` setting wins over them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import consul
import consul.aio
import consul.base

from hodei.errors import ConfigError

log = logging.getLogger(__name__)
# A read that long without a byte is a dead connection: blocking queries wait at most
# ``MAX_WAIT_S`` (+ Consul's jitter of wait/16), every other call answers at once.
MAX_WAIT_S = 60.0
READ_TIMEOUT_S = MAX_WAIT_S * 1.25
CONNECT_TIMEOUT_S = 5.0


def consul_address(setting: str, env: Mapping[str, str] | None = None) -> str:
    """The Consul HTTP address to use, or "" when Consul is not configured."""
    env = os.environ if env is None else env
    return setting or env.get("CONSUL_HTTP_ADDR", "")


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "t", "true", "yes", "on"):
        return True
    if raw in ("0", "f", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: cannot read {raw!r} as a boolean")


@dataclass(frozen=True, slots=True)
class ConsulOptions:
    """Where and how to reach Consul's HTTP API."""

    host: str = "127.0.0.1"
    port: int = 8500
    scheme: str = "http"
    token: str = ""
    verify: bool = True
    ca_file: str = ""
    ca_path: str = ""
    client_cert: str = ""
    client_key: str = ""

    @classmethod
    def resolve(
        cls, address: str, token: str = "", env: Mapping[str, str] | None = None
    ) -> ConsulOptions:
        env = os.environ if env is None else env
        address = address or env.get("CONSUL_HTTP_ADDR", "") or "127.0.0.1:8500"
        parsed = urllib.parse.urlparse(address if "//" in address else f"//{address}")
        scheme = parsed.scheme or "http"
        if _flag(env, "CONSUL_HTTP_SSL", False):
            scheme = "https"  # as in Consul's api.DefaultConfig: it only ever turns TLS on
        if not token and env.get("CONSUL_HTTP_TOKEN_FILE"):
            token = Path(env["CONSUL_HTTP_TOKEN_FILE"]).read_text().strip()
        options = cls(
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or (443 if parsed.scheme == "https" else 8500),
            scheme=scheme,
            token=token or env.get("CONSUL_HTTP_TOKEN", ""),
            verify=_flag(env, "CONSUL_HTTP_SSL_VERIFY", True),
            ca_file=env.get("CONSUL_CACERT", ""),
            ca_path=env.get("CONSUL_CAPATH", ""),
            client_cert=env.get("CONSUL_CLIENT_CERT", ""),
            client_key=env.get("CONSUL_CLIENT_KEY", ""),
        )
        if bool(options.client_cert) != bool(options.client_key):
            raise ConfigError("CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY go together")
        return options

    @property
    def cert(self) -> tuple[str, str] | None:
        return (self.client_cert, self.client_key) if self.client_cert else None

    def ssl_context(self) -> ssl.SSLContext:
        """TLS as Consul's client sets it up: CONSUL_CACERT/CAPATH replace the system's
        roots, a client certificate when given, no verification only when asked."""
        context = ssl.create_default_context(
            cafile=self.ca_file or None, capath=self.ca_path or None
        )
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert:
            context.load_cert_chain(*self.cert)
        return context


class _AsyncHTTP(consul.aio.HTTPClient):  # type: ignore[misc]
    """py-consul's aiohttp adapter with our TLS context and timeouts (its own ignores a
    client certificate without verification, and a CA folder)."""

    def __init__(self, options: ConsulOptions) -> None:
        consul.base.HTTPClient.__init__(self, options.host, options.port, options.scheme)
        self.loop = None
        tls: ssl.SSLContext | bool = options.ssl_context() if options.scheme == "https" else True
        timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls), timeout=timeout
        )


class AsyncConsul(consul.aio.Consul):  # type: ignore[misc]
    def __init__(self, options: ConsulOptions) -> None:
        self.options = options
        super().__init__(host=options.host, port=options.port, scheme=options.scheme)
        # py-consul lets CONSUL_HTTP_TOKEN override an explicit token; ours wins.
        self.token = options.token or None

    def http_connect(self, *args: Any, **kwargs: Any) -> _AsyncHTTP:
        return _AsyncHTTP(self.options)


def connect(address: str, token: str = "", env: Mapping[str, str] | None = None) -> Any:
    """An asyncio Consul client (call inside the running loop; ``await client.close()``)."""
    return AsyncConsul(ConsulOptions.resolve(address, token, env))


def connect_sync(address: str = "", token: str = "", env: Mapping[str, str] | None = None) -> Any:
    """A blocking Consul client (requests), for the command line."""
    options = ConsulOptions.resolve(address, token, env)
    verify: bool | str = options.verify and (options.ca_file or options.ca_path or True)
    client = consul.Consul(
        host=options.host,
        port=options.port,
        scheme=options.scheme,
        verify=verify,
        cert=options.cert,
        connections_timeout=READ_TIMEOUT_S,
    )
    client.token = options.token or None
    return client


def duration(seconds: float) -> str:
    """A Consul duration string ("1500ms")."""
    return f"{max(1, round(seconds * 1000))}ms"


def lost_check(exc: Exception) -> bool:
    """Consul before 1.11 answers a TTL update for an unknown check with a 500 saying so
    (later ones with a 404, which py-consul turns into a False return)."""
    return isinstance(exc, consul.ConsulException) and "does not have associated TTL" in str(exc)


class ServiceRegistration:
    """One service instance in the local Consul agent, with its check.

    ``ensure`` registers it (again: Consul forgets a service it reaped after
    ``DeregisterCriticalServiceAfter``, one deregistered by hand, or every service
    registered through the API when its agent restarts without its data) and
    ``deregister`` removes it. Failures are logged, never raised: Consul being away must
    not stop the process.
    """

    def __init__(
        self,
        client: Any,
        name: str,
        service_id: str,
        check: dict[str, Any],
        *,
        address: str = "",
        port: int = 0,
        meta: dict[str, str] | None = None,
        tags: list[str] | None = None,
    ) -> None:
        self.client = client
        self.name = name
        self.service_id = service_id
        self.check = check
        self.address = address
        self.port = port
        self.meta = meta or {}
        self.tags = tags or []

    async def ensure(self) -> bool:
        try:
            registered = await self.client.agent.service.register(
                self.name,
                service_id=self.service_id,
                address=self.address or None,
                port=self.port or None,
                tags=self.tags,
                meta=self.meta,
                check=self.check,
                replace_existing_checks=True,
            )
        except Exception as exc:
            log.warning("consul: cannot register %s: %s", self.service_id, exc)
            return False
        return bool(registered)

    async def present(self) -> bool | None:
        """Whether the local Consul agent knows the service (None: cannot tell)."""
        try:
            # py-consul answers a 404 with None instead of raising NotFound.
            definition = await self.client.agent.service_definition(self.service_id)
        except Exception as exc:
            log.warning("consul: cannot read %s: %s", self.service_id, exc)
            return None
        return definition is not None

    async def keep(self, interval_s: float) -> None:
        """Register, then look every ``interval_s`` and register again if Consul forgot."""
        await self.ensure()
        while True:
            await asyncio.sleep(interval_s)
            if await self.present() is False:
                log.warning("consul: %s is gone, registering it again", self.service_id)
                await self.ensure()

    async def deregister(self) -> None:
        try:
            await self.client.agent.service.deregister(self.service_id)
        except Exception as exc:
            log.warning("consul: cannot deregister %s: %s", self.service_id, exc)
