"""``hodei server``: the control plane process, assembled from its parts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from hodei.consul import ServiceRegistration, consul_address
from hodei.consul import connect as connect_consul
from hodei.domain import GRPC_LIMITS, Clock, now_ms
from hodei.plugin import listeners
from hodei.plugin.agent_identity import AgentIdentities
from hodei.plugin.consul_fleet import PassingWorkers, server_registration
from hodei.plugin.consul_leader import ConsulLeaderLock
from hodei.plugin.data import DataLayer, LeaseTiming
from hodei.plugin.leader import LeaderLock, RedisLeaderLock
from hodei.plugin.monitor import HealthMonitor
from hodei.plugin.scheduler import Scheduler
from hodei.plugin.servicer import WorkerService
from hodei.plugin.sessions import Sessions
from hodei.plugin.settings import ServerSettings
from hodei.proto import hodei_pb2_grpc as pb_grpc
from hodei.readiness import Readiness

log = logging.getLogger(__name__)
SERVICE_NAME = "hodei.v1.WorkerService"


class ControlPlane:
    """Every part of a server process; ``start``/``stop`` bracket its life."""

    def __init__(self, settings: ServerSettings, clock: Clock = now_ms) -> None:
        self.settings = s = settings
        self.identities = AgentIdentities.from_settings(s)
        self.tls = listeners.tls_files(s)
        address = consul_address(s.consul_addr)
        listeners.check_exposure(s, self.identities, bool(address) and s.consul_register)
        self.data = DataLayer(
            settings,
            f"hodei-server-{settings.server_id}",
            LeaseTiming(s.lease_ttl_s, s.retry_base_s, s.retry_cap_s),
            clock,
        )
        self.consul: Any = connect_consul(address, s.consul_token) if address else None
        # This process's name wherever two processes must never pass for one (who leads;
        # the inbox for its agents' streams): two servers may be given one id by mistake,
        # and a server restarted under its id must not lead in place of a previous life
        # that is frozen, not dead.
        self.instance_id = f"{s.server_id}#{secrets.token_hex(4)}"
        self.leader: LeaderLock
        if self.consul is not None:
            self.leader = ConsulLeaderLock(
                self.consul,
                self.data.leadership,
                self.instance_id,
                s.consul_leader_key,
                s.consul_session_ttl_s,
                s.consul_lock_delay_s,
            )
        else:
            self.leader = RedisLeaderLock(self.data.leadership, self.instance_id, s.leader_ttl_s)
        self.sessions = Sessions(self.data, self.instance_id)
        self.scheduler = Scheduler(self.data, s, self.leader, self.sessions.deliver)
        self.monitor = HealthMonitor(s, self.data, self.leader)
        self.registration: ServiceRegistration | None = None
        self.passing: PassingWorkers | None = None
        if self.consul is not None:
            self.passing = PassingWorkers(self.consul, self._consul_changed)
            self.scheduler.gate = self.passing.__contains__
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.readiness = Readiness(self.data, self.consul)
        self.grpc_server: grpc.aio.Server | None = None
        self.health_server: grpc.aio.Server | None = None
        self.health_port = -1
        self.tasks: list[asyncio.Task[None]] = []
        self.port = 0

    async def start(self) -> int:
        server = grpc.aio.server(options=GRPC_LIMITS)
        pb_grpc.add_WorkerServiceServicer_to_server(  # type: ignore[no-untyped-call]
            WorkerService(self.sessions, self.identities), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.port = listeners.add_worker_port(server, self.settings, self.tls)
        await server.start()
        self.grpc_server = server
        if self.tls is not None and self.settings.grpc_health_port >= 0:
            self.health_server, self.health_port = listeners.health_server(
                self.settings, self.health
            )
            await self.health_server.start()
        await self._serving(not await self.readiness.check())  # NOT_SERVING until it answers
        self.tasks = [
            asyncio.create_task(coro, name=name)
            for name, coro in (
                ("leader", self.leader.run()),
                ("scheduler", self.scheduler.run()),
                ("monitor", self.monitor.run()),
                ("delivery", self.sessions.listen()),
                ("readiness", self.readiness.watch(self._serving)),
            )
        ]
        if self.passing is not None:
            self.tasks.append(asyncio.create_task(self.passing.run(), name="consul-watch"))
        self.registration = None
        if self.consul is not None and self.settings.consul_register:
            self.registration = server_registration(
                self.consul,
                self.settings,
                self.port,
                self.health_port if self.health_server is not None else 0,
            )
            self.tasks.append(
                asyncio.create_task(
                    self.registration.keep(self.settings.consul_check_interval_s * 3),
                    name="consul-registration",
                )
            )
        log.info(
            "server %s listening for agents on %s:%d",
            self.instance_id,
            self.settings.grpc_host,
            self.port,
            extra={"grpc_port": self.port, "server_id": self.settings.server_id},
        )
        return self.port

    async def _serving(self, ready: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def _consul_changed(self, workers: set[str]) -> None:
        """Consul's verdict on some workers changed: tell the scheduler through the event
        stream (it refreshes those workers and gives parked work another look)."""
        if self.leader.is_leader:
            await self.data.workers.consul_changed(sorted(workers), self.passing or set())

    async def stop(self, grace_s: float = 5.0) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        # Streams never end by themselves: close them, so agents move to another server
        # now rather than after the grace period.
        self.sessions.stop()
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace_s)
        if self.health_server is not None:
            await self.health_server.stop(0)
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            _, stuck = await asyncio.wait(self.tasks, timeout=5)
            for task in stuck:
                where = "".join(
                    f"\n  {f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}"
                    for f in task.get_stack()
                )
                log.error("task %s did not stop; it waits at:%s", task.get_name(), where)
        if self.registration is not None:
            await self.registration.deregister()
        if self.consul is not None:
            await self.consul.close()
        with contextlib.suppress(Exception):
            await self.data.close()


async def serve(settings: ServerSettings) -> None:
    if settings.metrics_port >= 0:
        start_http_server(settings.metrics_port, addr=settings.grpc_host)
    plane = ControlPlane(settings)
    await plane.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("server %s stopping", plane.instance_id)
    await plane.stop()
