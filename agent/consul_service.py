"""The agent in Consul: service ``hodei-agent`` with a TTL check that every successful
heartbeat passes, its note telling running/max jobs and load (what the Consul UI shows);
warning while Draining; deregistered on exit. It also finds servers through Consul when no
server address is given.
"""

from __future__ import annotations

import logging
from typing import Any

from hodei import __version__
from hodei.agent.settings import AgentSettings
from hodei.consul import ServiceRegistration, duration, lost_check
from hodei.proto import hodei_pb2 as pb

log = logging.getLogger(__name__)
AGENT_SERVICE = "hodei-agent"
SERVER_SERVICE = "hodei-server"


def service_id(worker_id: str) -> str:
    return f"{AGENT_SERVICE}-{worker_id}"


def check_id(worker_id: str) -> str:
    return f"{service_id(worker_id)}-ttl"


class AgentService:
    def __init__(
        self, client: Any, settings: AgentSettings, capacity: pb.Resources, runtimes: list[str]
    ) -> None:
        self.client = client
        self.settings = settings
        self.capacity = capacity
        self.check_id = check_id(settings.worker_id)
        self.runtimes = runtimes
        self.registration = self._registration()
        self.registered = False

    def _registration(self) -> ServiceRegistration:
        s, c = self.settings, self.capacity
        ttl = max(1.0, s.heartbeat_interval_s * s.consul_ttl_heartbeats)
        return ServiceRegistration(
            self.client,
            AGENT_SERVICE,
            service_id(s.worker_id),
            {
                "CheckID": self.check_id,
                "Name": "hodei agent heartbeat",
                "TTL": duration(ttl),
                "DeregisterCriticalServiceAfter": duration(s.consul_deregister_after_s),
                "Notes": "passed by the agent on every heartbeat the server accepted",
            },
            address=s.advertise_address,
            port=max(0, s.health_port),
            meta={
                "worker_id": s.worker_id,
                "cpu_millicores": str(c.cpu_millicores),
                "memory_mb": str(c.memory_mb),
                "gpus": str(c.gpus),
                "job_slots": str(c.job_slots),
                "runtimes": ",".join(self.runtimes),
                "version": __version__,
                # For Prometheus' Consul service discovery (see dashboards/prometheus.yml).
                "metrics_port": str(s.metrics_port),
            },
            tags=[f"{k}={v}" for k, v in sorted(s.label_map.items())],
        )

    async def register(self) -> None:
        self.registered = await self.registration.ensure()

    async def passed(self, running: int, cpu: float, memory: float, runtimes: list[str]) -> None:
        """A heartbeat went through: pass the TTL check with the load as its note."""
        if runtimes != self.runtimes:
            # The runtimes on offer are in Meta: register again to show the change.
            self.runtimes = runtimes
            self.registration = self._registration()
            self.registered = False
        note = (
            f"running {running}/{self.capacity.job_slots} jobs, "
            f"cpu {cpu:.0f}%, memory {memory:.0f}%"
        )
        await self._update("pass", note)

    async def draining(self, running: int) -> None:
        await self._update("warn", f"draining: {running} jobs left, no new work")

    async def _update(self, status: str, note: str, retry: bool = True) -> None:
        if not self.registered:
            await self.register()
            if not self.registered:
                return
        try:
            updated = await getattr(self.client.agent.check, f"ttl_{status}")(
                self.check_id, notes=note
            )
        except Exception as exc:
            if not lost_check(exc):
                log.warning("consul: cannot update check %s: %s", self.check_id, exc)
                return
            updated = False
        if updated is False and retry:
            # A 404: Consul reaped the service (critical longer than
            # DeregisterCriticalServiceAfter), someone deregistered it, or the Consul agent
            # restarted without its data. Register it again and pass the check at once.
            log.warning("consul: check %s is unknown to Consul, re-registering", self.check_id)
            self.registered = False
            await self._update(status, note, retry=False)

    async def deregister(self) -> None:
        await self.registration.deregister()
        self.registered = False


async def discover_servers(client: Any) -> list[str]:
    """Addresses (host:port) of the passing ``hodei-server`` instances."""
    _, entries = await client.health.service(SERVER_SERVICE, passing=True)
    found = []
    for entry in entries:
        service = entry["Service"]
        host = service.get("Address") or entry["Node"].get("Address")
        if host and service.get("Port"):
            found.append(f"{host}:{service['Port']}")
    return sorted(found)
