"""The control plane in Consul: ``hodei-server`` registered with a gRPC health check, and a
blocking-query watch of the passing ``hodei-agent`` instances that the scheduler consults,
so work goes only to workers that are both connected and passing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hodei.consul import ServiceRegistration, duration
from hodei.plugin.settings import ServerSettings
from hodei.tasks import raise_if_cancelled

log = logging.getLogger(__name__)
AGENT_SERVICE = "hodei-agent"
SERVER_SERVICE = "hodei-server"


def server_registration(
    client: Any, settings: ServerSettings, port: int, check_port: int = 0
) -> ServiceRegistration:
    """``check_port``: where the gRPC check asks (the plaintext health port under TLS)."""
    address = settings.advertise_address or settings.grpc_host
    service_id = f"{SERVER_SERVICE}-{settings.server_id}"
    return ServiceRegistration(
        client,
        SERVER_SERVICE,
        service_id,
        {
            "CheckID": f"{service_id}-grpc",
            "Name": "hodei server gRPC health",
            "GRPC": f"{address}:{check_port or port}",
            "GRPCUseTLS": False,
            "Interval": duration(settings.consul_check_interval_s),
            "Timeout": duration(min(settings.consul_check_interval_s, 5.0)),
            "DeregisterCriticalServiceAfter": duration(settings.consul_deregister_after_s),
        },
        address=address,
        port=port,
        meta={"server_id": settings.server_id, "metrics_port": str(settings.metrics_port)},
    )


def worker_of(entry: dict[str, Any]) -> str:
    service = entry["Service"]
    meta = service.get("Meta") or {}
    worker: str = meta.get("worker_id") or service["ID"].removeprefix(f"{AGENT_SERVICE}-")
    return worker


class PassingWorkers:
    """The workers whose ``hodei-agent`` checks all pass, kept current by blocking queries.

    Index handling follows Consul's rules for blocking queries: start without an index,
    reset to 0 when the returned index goes backwards, never block on an index below 1,
    and never query more often than ``min_interval_s``. Until Consul first answers, no
    worker counts as passing.
    """

    def __init__(
        self,
        client: Any,
        on_change: Callable[[set[str]], Awaitable[None]],
        wait_s: float = 30.0,
        min_interval_s: float = 0.2,
    ) -> None:
        self.client = client
        self.on_change = on_change
        self.wait_s = wait_s
        self.min_interval_s = min_interval_s
        self.passing: set[str] = set()
        self.index = 0
        self.answered = False

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self.passing

    async def poll(self) -> None:
        """One (blocking, once an index is known) query and its consequences."""
        index, entries = await self.client.health.service(
            AGENT_SERVICE,
            index=self.index or None,
            wait=duration(self.wait_s),
            passing=True,
        )
        returned = int(index or 0)
        if returned < self.index:
            self.index = 0  # went backwards (a Consul restore, a leader change): start over
        else:
            self.index = max(1, returned)
        passing = {worker_of(e) for e in entries}
        changed = passing ^ self.passing
        self.passing = passing
        first, self.answered = not self.answered, True
        if changed or first:
            log.info("consul: %d workers passing", len(passing))
            await self.on_change(changed)

    async def run(self) -> None:
        failures = 0
        while True:
            raise_if_cancelled()
            started = time.monotonic()
            try:
                await self.poll()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning("consul: watching %s failed: %s", AGENT_SERVICE, exc)
                await asyncio.sleep(min(10.0, 0.5 * 2 ** min(failures, 5)))
            elapsed = time.monotonic() - started
            if elapsed < self.min_interval_s:
                await asyncio.sleep(self.min_interval_s - elapsed)
