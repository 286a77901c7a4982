"""``hodei agent``: the seed's HWP Agent, assembled from its parts.

Agent-side states follow the seed: Creating -> Registering -> Available <-> Running ->
Draining -> Terminated, and Failed when the server refuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from dataclasses import replace
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from hodei import loops
from hodei.agent import metrics
from hodei.agent.client import ServerConnection
from hodei.agent.consul_service import AgentService, discover_servers
from hodei.agent.docker_instances import DockerLauncher
from hodei.agent.docker_runtime import DockerRuntime
from hodei.agent.identity import agent_mark
from hodei.agent.instances import InstancePool
from hodei.agent.process_instances import share_uids
from hodei.agent.process_manager import ProcessManager
from hodei.agent.process_runtime import ProcessRuntime, reap_leftovers
from hodei.agent.resources import ResourceMonitor, capacity
from hodei.agent.runtime import Runtime, now_ms
from hodei.agent.runtime_setup import build_launchers, build_runtimes
from hodei.agent.settings import AgentSettings
from hodei.consul import connect, consul_address
from hodei.domain import WorkerState
from hodei.errors import AgentRejected
from hodei.logs import inv
from hodei.proto import hodei_pb2 as pb

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, settings: AgentSettings, runtimes: dict[str, Runtime] | None = None):
        self.consul_addr = consul_address(settings.consul_addr)
        if not settings.server and not self.consul_addr:
            settings = replace(settings, server="127.0.0.1:7070")
        self.settings = settings
        self.consul: Any = None
        self.consul_service: AgentService | None = None
        # Consul's TTL check is passed beside the heartbeats, one update at a time: a Consul
        # that answers late must not hold up the beats that keep this worker's leases.
        self._consul_update: asyncio.Task[None] | None = None
        self.state = WorkerState.CREATING
        self.mark = agent_mark(settings.state_dir, settings.worker_id)
        self.runtimes = runtimes if runtimes is not None else build_runtimes(settings, self.mark)
        self.monitor = ResourceMonitor()
        self.beat_now = asyncio.Event()
        self.connection = ServerConnection(
            settings,
            capacity(settings),
            self.offered_runtimes,
            self._on_assign,
            self._on_cancel,
            lambda: self.jobs.running(),
            self._discover_servers if self.consul_addr else None,
        )
        self.instances = InstancePool(
            build_launchers(settings, self.mark, self.runtimes),
            self.connection.capacity.memory_mb,
            self._reserved_mb,
            settings.lambda_idle_s,
            on_change=self.beat_now.set,
        )
        process = self.runtimes.get("process")
        if isinstance(process, ProcessRuntime):
            share_uids(process.sandbox, self.instances)
        self.connection.on_prewarm = self._on_prewarm
        self.jobs = ProcessManager(
            self.runtimes,
            self.connection.send,
            self.connection.result,
            settings.worker_id,
            settings.log_batch_lines,
            settings.log_flush_s,
            lambda_runtimes={n: self.instances.runtime(n) for n in self.instances.launchers},
        )
        self.stopping = asyncio.Event()
        self.docker = self.runtimes.get("docker")
        self._adopting: asyncio.Future[None] | None = None
        self.drain_deadline = 0.0
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.health_port = 0

    async def _serve_health(self) -> grpc.aio.Server | None:
        if self.settings.health_port < 0:
            return None
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.health_port = server.add_insecure_port(
            f"{self.settings.metrics_host}:{self.settings.health_port}"
        )
        await server.start()
        await self._publish_health()
        return server

    async def _publish_health(self) -> None:
        serving = self.state in (WorkerState.AVAILABLE, WorkerState.RUNNING) and (
            self.connection.connected.is_set()
        )
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)

    async def _on_assign(self, request: pb.AssignJobRequest) -> None:
        if self.state is WorkerState.DRAINING:
            log.info(
                "invocation %s attempt %d: handed back, draining",
                request.invocation_id,
                request.attempt,
                extra=inv(request.invocation_id, request.attempt),
            )
            await self.jobs.hand_back(request)
            return
        if request.interface != "lambda":
            # Idle lambda instances give way to other work (a cold start makes its own room).
            self.instances.make_room(request.resources.memory_mb)
        self.jobs.start(request)
        self.state = WorkerState.RUNNING

    def _reserved_mb(self) -> int:
        """Memory the running stdio jobs hold (lambda jobs hold their instance's)."""
        return sum(
            job.request.resources.memory_mb
            for job in self.jobs.jobs.values()
            if job.request.interface != "lambda"
        )

    def _on_prewarm(self, request: pb.PrewarmRequest) -> None:
        if self.state is not WorkerState.DRAINING:
            self.instances.prewarm(request)

    def _on_cancel(self, request: pb.CancelJobRequest) -> None:
        if self.jobs.cancel(request.invocation_id, request.attempt):
            log.info(
                "invocation %s attempt %d: cancelling (%s)",
                request.invocation_id,
                request.attempt,
                request.reason,
                extra=inv(request.invocation_id, request.attempt),
            )

    async def _discover_servers(self) -> list[str]:
        if self.consul is None:
            return []
        return await discover_servers(self.consul)

    def offered_runtimes(self) -> list[str]:
        return sorted(name for name, runtime in self.runtimes.items() if runtime.available)

    async def _heartbeats(self) -> None:
        try:
            while True:
                await self._beat()
        finally:
            if self._consul_update is not None:
                self._consul_update.cancel()
                await asyncio.gather(self._consul_update, return_exceptions=True)

    async def _beat(self) -> None:
        # A runtime coming or going is told at once, not at the next beat.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.beat_now.wait(), self.settings.heartbeat_interval_s)
        self.beat_now.clear()
        self.connection.resend_unacked(self.settings.result_resend_s)
        cpu, memory = self.monitor.sample()
        worker = self.settings.worker_id
        metrics.CPU.labels(worker).set(cpu)
        metrics.MEMORY.labels(worker).set(memory)
        if self.state in (WorkerState.AVAILABLE, WorkerState.RUNNING):
            self.state = WorkerState.RUNNING if self.jobs.jobs else WorkerState.AVAILABLE
        delivered = await self.connection.heartbeat(
            pb.Heartbeat(
                worker_id=worker,
                session_id=self.connection.session_id,
                cpu_usage_percent=cpu,
                memory_usage_percent=memory,
                running_jobs=self.connection.reported_jobs(),
                sent_at_ms=now_ms(),
                runtimes=pb.RuntimeList(names=self.offered_runtimes()),
                pools=self.instances.pools(),
            )
        )
        metrics.HEARTBEATS.labels(worker).inc()
        passing = delivered and self.state is not WorkerState.DRAINING
        in_flight = self._consul_update is not None and not self._consul_update.done()
        if passing and self.consul_service and not in_flight:
            self._consul_update = asyncio.create_task(
                self.consul_service.passed(
                    len(self.jobs.jobs), cpu, memory, self.offered_runtimes()
                )
            )
            self._consul_update.add_done_callback(_consul_failure)

    async def run(self) -> int:
        """Run until drained; returns the process exit code."""
        leftovers = await asyncio.to_thread(reap_leftovers, self.mark)
        if leftovers:
            log.warning("killed %d function processes left by an earlier run", leftovers)
        watcher = await self._start_docker()
        if self.consul_addr:
            self.consul = connect(self.consul_addr, self.settings.consul_token)
            self.consul_service = AgentService(
                self.consul, self.settings, self.connection.capacity, self.offered_runtimes()
            )
        self.state = WorkerState.REGISTERING
        health_server = await self._serve_health()
        connection = asyncio.create_task(self.connection.run())
        heartbeats = asyncio.create_task(self._heartbeats())
        stop = asyncio.create_task(self.stopping.wait())
        connected = asyncio.create_task(self.connection.connected.wait())
        try:
            done, _ = await asyncio.wait(
                {connection, connected, stop}, return_when=asyncio.FIRST_COMPLETED
            )
            if connected in done:
                self.state = WorkerState.AVAILABLE
                await self._publish_health()
                if self.consul_service is not None:
                    await self.consul_service.register()
                done, _ = await asyncio.wait(
                    {connection, stop}, return_when=asyncio.FIRST_COMPLETED
                )
            if connection in done:
                connection.result()
                return 0
            await self.drain()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(connection), min(5.0, self._left()))
            return 0
        except AgentRejected as exc:
            self.state = WorkerState.FAILED
            log.error("the server refused this agent: %s", exc)
            return 1
        finally:
            for task in (heartbeats, stop, connected, connection, watcher):
                task.cancel()
            await asyncio.gather(
                heartbeats, stop, connected, connection, watcher, return_exceptions=True
            )
            self.jobs.hand_back_all()
            await self.instances.close()
            for launcher in self.instances.launchers.values():
                if isinstance(launcher, DockerLauncher):
                    await launcher.close()
            await self.connection.close()
            if health_server is not None:
                await health_server.stop(0)
            if isinstance(self.docker, DockerRuntime):
                self.docker.close()
            process = self.runtimes.get("process")
            if isinstance(process, ProcessRuntime):
                await process.sandbox.close()
            if self.consul is not None:
                if self.consul_service is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.consul_service.deregister(), 2.0)
                await self.consul.close()

    async def _start_docker(self) -> asyncio.Future[None]:
        """Probe the engine, take back the containers an earlier life left, and watch the
        engine from then on (taking back leftovers again whenever it comes back)."""
        docker = self.docker
        if not isinstance(docker, DockerRuntime):
            return asyncio.get_running_loop().create_future()
        if await docker.probe():
            await self._adopt_leftovers(docker)
            await self._remove_leftover_instances()

        def changed() -> None:
            self.beat_now.set()
            if docker.available:
                self._adopting = asyncio.ensure_future(self._adopt_leftovers(docker))

        return asyncio.ensure_future(docker.watch(changed))

    async def _remove_leftover_instances(self) -> None:
        """Lambda instance containers of an earlier life serve nobody now."""
        launcher = self.instances.launchers.get("docker")
        if isinstance(launcher, DockerLauncher):
            try:
                if removed := await launcher.leftovers():
                    log.warning(
                        "removed %d lambda instance containers left by an earlier run", removed
                    )
            except Exception as exc:
                log.warning("cannot list leftover instance containers: %s", exc)

    async def _adopt_leftovers(self, docker: DockerRuntime) -> None:
        """Containers labelled with this worker that no running job owns: an earlier life
        started them. Each is followed to its end and reported (or, when the server no
        longer leases it to us, killed by the revocation that follows)."""
        try:
            leftovers = await docker.leftovers()
        except Exception as exc:
            log.warning("cannot list leftover containers: %s", exc)
            return
        for leftover in leftovers:
            job = leftover.job
            if job.invocation_id in self.jobs.jobs:
                continue  # ours, running now
            log.warning(
                "invocation %s attempt %d: container %s outlived an earlier run, resuming",
                job.invocation_id,
                job.attempt,
                leftover.container_id[:12],
                extra=inv(job.invocation_id, job.attempt),
            )
            self.jobs.adopt(job, docker.resumer(leftover))

    async def drain(self) -> None:
        """No new jobs; let running ones finish within the grace period, hand back the rest
        (stopping their processes and containers), wait until every result is acknowledged
        and the server holds no lease for us — all within grace + hand-back."""
        loop = asyncio.get_running_loop()
        grace_ends = loop.time() + self.settings.drain_grace_s
        self.drain_deadline = grace_ends + self.settings.drain_handback_s
        self.state = WorkerState.DRAINING
        await self._publish_health()
        log.info(
            "draining: %d jobs running, grace %.0fs",
            len(self.jobs.jobs),
            self.settings.drain_grace_s,
        )
        await self.connection.set_draining()
        if self.consul_service is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.consul_service.draining(len(self.jobs.jobs)), 2.0)
        try:
            await asyncio.wait_for(self.jobs.idle.wait(), max(0.0, grace_ends - loop.time()))
        except TimeoutError:
            log.warning("drain grace over: handing back %d jobs", len(self.jobs.jobs))
            self.jobs.hand_back_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.jobs.idle.wait(), self._left(share=0.6))
        while loop.time() < self.drain_deadline - 1.0:
            if not self.connection.unacked and not self.jobs.jobs:
                try:
                    status = await asyncio.wait_for(self.connection.status(), self._left(0.5))
                except Exception:
                    # No server to ask: whatever it may still lease to us expires and runs
                    # elsewhere; waiting out the budget would not change that.
                    break
                if not status.jobs:
                    break
            await asyncio.sleep(0.1)
        await self.connection.terminate()
        self.state = WorkerState.TERMINATED
        log.info("terminated")

    def _left(self, share: float = 1.0) -> float:
        """A share of the drain budget still left (0 outside a drain's hand-back)."""
        remaining = self.drain_deadline - asyncio.get_running_loop().time()
        return max(0.0, remaining * share)


def _watch_children_with_pidfd() -> None:
    """One pidfd per function process instead of one waiting thread each (asyncio's
    default watcher on 3.11); 3.12+ picks pidfd by itself, and uvloop watches its children
    itself."""
    loop = asyncio.get_running_loop()
    if loops.is_uvloop(loop):
        return
    if sys.version_info < (3, 12) and hasattr(asyncio, "PidfdChildWatcher"):
        with contextlib.suppress(OSError):
            watcher = asyncio.PidfdChildWatcher()
            watcher.attach_loop(loop)
            asyncio.set_child_watcher(watcher)


async def serve(settings: AgentSettings) -> int:
    _watch_children_with_pidfd()
    if settings.metrics_port >= 0:
        start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=metrics.REGISTRY
        )
    agent = Agent(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stopping.set)
    return await agent.run()


def _consul_failure(update: asyncio.Task[None]) -> None:
    if not update.cancelled() and (exc := update.exception()) is not None:
        log.warning("consul: cannot pass the TTL check: %s", exc)
