"""What every process shares about Consul: the client, and a service registration that
survives Consul restarts.

Consul is optional. It is on when an address is configured (``consul_addr`` or the
standard ``CONSUL_HTTP_ADDR``); ``CONSUL_HTTP_TOKEN`` (or ``consul_token``) is sent with
every call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any

import consul
import consul.aio

log = logging.getLogger(__name__)


def consul_address(setting: str, env: Mapping[str, str] | None = None) -> str:
    """The Consul HTTP address to use, or "" when Consul is not configured."""
    env = os.environ if env is None else env
    return setting or env.get("CONSUL_HTTP_ADDR", "")


def connect(address: str, token: str = "", env: Mapping[str, str] | None = None) -> Any:
    """An asyncio Consul client (call inside the running loop; ``await client.close()``)."""
    env = os.environ if env is None else env
    parsed = urllib.parse.urlparse(address if "//" in address else f"//{address}")
    return consul.aio.Consul(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 8500,
        scheme=parsed.scheme or "http",
        token=token or env.get("CONSUL_HTTP_TOKEN") or None,
    )


def duration(seconds: float) -> str:
    """A Consul duration string ("1500ms")."""
    return f"{max(1, round(seconds * 1000))}ms"


class ServiceRegistration:
    """One service instance in the local Consul agent, with its check.

    ``ensure`` registers it (again: Consul forgets services registered through the API
    when its agent restarts without its data) and ``deregister`` removes it. Failures are
    logged, never raised: Consul being away must not stop the process.
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
            await self.client.agent.service.register(
                self.name,
                service_id=self.service_id,
                address=self.address or None,
                port=self.port or None,
                tags=self.tags,
                meta=self.meta,
                check=self.check,
                replace_existing_checks=True,
            )
            return True
        except Exception as exc:
            log.warning("consul: cannot register %s: %s", self.service_id, exc)
            return False

    async def keep(self, interval_s: float) -> None:
        """Register, then look every ``interval_s`` and register again if Consul forgot."""
        await self.ensure()
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.client.agent.service_definition(self.service_id)
            except consul.NotFound:
                log.info("consul: %s is gone, registering it again", self.service_id)
                await self.ensure()
            except Exception as exc:
                log.warning("consul: cannot read %s: %s", self.service_id, exc)

    async def deregister(self) -> None:
        try:
            await self.client.agent.service.deregister(self.service_id)
        except Exception as exc:
            log.warning("consul: cannot deregister %s: %s", self.service_id, exc)
