"""The agent's gRPC client: registration, the JobStream, reconnection and result buffering.

Jobs keep running while the connection is down. Their results wait in ``unacked`` until
the server acknowledges them (ResultAck), and are sent again after every reconnect and
every ``result_resend_s`` while unacknowledged (a server whose store was away asks for
that with ``retry``); the server's fencing makes a repeated result harmless. Messages
that queue up while a write is in flight travel as one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from hodei import __version__, backoff
from hodei.agent import metrics
from hodei.agent.settings import AgentSettings
from hodei.domain import GRPC_LIMITS
from hodei.errors import AgentRejected, ConfigError, NoServerFound
from hodei.logs import inv
from hodei.proto import hodei_pb2 as pb
from hodei.proto import hodei_pb2_grpc as pb_grpc
from hodei.streams import drain
from hodei.tls import TlsFiles, open_channel

log = logging.getLogger(__name__)

FATAL = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
)


class ServerConnection:
    def __init__(
        self,
        settings: AgentSettings,
        capacity: pb.Resources,
        runtimes: Callable[[], list[str]],
        on_assign: Callable[[pb.AssignJobRequest], Awaitable[None]],
        on_cancel: Callable[[pb.CancelJobRequest], None],
        running: Callable[[], list[pb.RunningJob]],
        discover: Callable[[], Awaitable[list[str]]] | None = None,
    ) -> None:
        self.settings = settings
        self.capacity = capacity
        self.runtimes = runtimes
        self.on_assign = on_assign
        self.on_cancel = on_cancel
        self.running = running
        self._auth: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {settings.token}"),) if settings.token else ()
        )
        self.tls = TlsFiles.of(
            settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file, "agent"
        )
        # Several servers may be given (comma-separated): after a failure the agent moves
        # on to the next, so losing one server replica does not strand its agents.
        self.servers = [a.strip() for a in settings.server.split(",") if a.strip()]
        # With no address given, servers are looked up (in Consul) before each attempt
        # that follows a failure.
        self.discover = discover
        if not self.servers and discover is None:
            raise ConfigError("no server address, and no Consul to find one")
        self._use(self.servers[0] if self.servers else "127.0.0.1:0")
        self.session_id = ""
        self.connected = asyncio.Event()
        self.unacked: dict[tuple[str, int], pb.JobResult] = {}
        self._sent_at: dict[tuple[str, int], float] = {}
        self._outbox: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()
        self._draining = False
        self._closing = False
        self._connections = 0
        # Server -> agent pre-warm requests (lambda instances), when the agent takes them.
        self.on_prewarm: Callable[[pb.PrewarmRequest], None] | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The token, and once registered the session: with a fleet token, presenting the
        session is what lets this agent register its worker id again while it is alive."""
        if not self.session_id:
            return self._auth
        return (*self._auth, ("hodei-session", self.session_id))

    # -- what the rest of the agent calls ----------------------------------------------
    def send(self, message: pb.AgentMessage) -> None:
        """Queue a message for the stream; dropped while disconnected (results are kept)."""
        if self.connected.is_set():
            self._outbox.put_nowait(message)

    def result(self, result: pb.JobResult) -> None:
        key = (result.invocation_id, result.attempt)
        self.unacked[key] = result
        self._sent_at[key] = asyncio.get_running_loop().time()
        metrics.BUFFERED_RESULTS.set(len(self.unacked))
        self.send(pb.AgentMessage(result=result))

    def resend_unacked(self, older_than_s: float) -> int:
        """Send again the results still unacknowledged after ``older_than_s``."""
        if not self.connected.is_set():
            return 0
        now = asyncio.get_running_loop().time()
        due = [k for k, at in self._sent_at.items() if now - at >= older_than_s]
        for key in due:
            self._sent_at[key] = now
            self._outbox.put_nowait(pb.AgentMessage(result=self.unacked[key]))
        return len(due)

    def reported_jobs(self) -> list[pb.RunningJob]:
        """Running jobs and finished-but-unacknowledged ones: the server must keep both."""
        jobs = {j.invocation_id: j for j in self.running()}
        for invocation_id, attempt in self.unacked:
            jobs.setdefault(
                invocation_id, pb.RunningJob(invocation_id=invocation_id, attempt=attempt)
            )
        return list(jobs.values())

    async def set_draining(self) -> None:
        self._draining = True
        self.send(
            pb.AgentMessage(
                status=pb.WorkerStatus(
                    worker_id=self.settings.worker_id,
                    session_id=self.session_id,
                    state=pb.WORKER_STATE_DRAINING,
                )
            )
        )

    async def heartbeat(self, beat: pb.Heartbeat) -> bool:
        """In-stream when connected; otherwise the unary RPC, which keeps the leases of
        running jobs alive while the stream is being re-established. Whether it went
        through."""
        if self.connected.is_set():
            self.send(pb.AgentMessage(heartbeat=beat))
            return True
        if not self.session_id:
            return False
        try:
            await self.stub.Heartbeat(beat, metadata=self.metadata, timeout=2.0)
            return True
        except grpc.aio.AioRpcError:
            return False

    async def status(self) -> pb.WorkerStatus:
        request = pb.GetWorkerStatusRequest(worker_id=self.settings.worker_id)
        reply: pb.WorkerStatus = await self.stub.GetWorkerStatus(
            request, metadata=self.metadata, timeout=5.0
        )
        return reply

    async def terminate(self) -> None:
        """Say goodbye on the stream and close it."""
        self._closing = True
        if self.connected.is_set():
            self._outbox.put_nowait(
                pb.AgentMessage(
                    status=pb.WorkerStatus(
                        worker_id=self.settings.worker_id,
                        session_id=self.session_id,
                        state=pb.WORKER_STATE_TERMINATED,
                    )
                )
            )
            self._outbox.put_nowait(None)

    async def close(self) -> None:
        await self.channel.close(grace=None)

    def _use(self, address: str) -> None:
        self.server = address
        self._tls_stamp = self.tls.stamp() if self.tls is not None else ()
        # gRPC's own reconnection backoff grows to 120 s by default: a server that comes
        # back would wait that long for its agents. Keep it within the agent's own bounds.
        base_ms = max(1, int(self.settings.reconnect_base_s * 1000))
        cap_ms = max(base_ms, int(self.settings.reconnect_cap_s * 1000))
        self.channel = open_channel(
            address,
            self.tls,
            self.settings.tls_server_name,
            options=[
                *GRPC_LIMITS,
                ("grpc.initial_reconnect_backoff_ms", base_ms),
                ("grpc.min_reconnect_backoff_ms", base_ms),
                ("grpc.max_reconnect_backoff_ms", cap_ms),
            ],
        )
        self.stub: Any = pb_grpc.WorkerServiceStub(self.channel)  # type: ignore[no-untyped-call]

    async def _rediscover(self) -> None:
        assert self.discover is not None
        try:
            found = await self.discover()
        except Exception as exc:
            log.warning("server discovery failed: %s", exc)
            found = []
        if not found:
            raise NoServerFound("no passing hodei-server in Consul")
        if found != self.servers:
            log.info("servers found in Consul: %s", ", ".join(found))
            self.servers = found
            await self.channel.close(grace=None)
            self._use(found[0])

    async def _next_server(self) -> None:
        if len(self.servers) > 1:
            await self.channel.close(grace=None)
            self._use(self.servers[(self.servers.index(self.server) + 1) % len(self.servers)])
        elif self.tls is not None and self.tls.stamp() != self._tls_stamp:
            # Certificate files renewed in place (an expired one fails every handshake).
            await self.channel.close(grace=None)
            self._use(self.server)

    # -- the connection loop -----------------------------------------------------------
    async def run(self) -> None:
        """Stay connected until terminated; raises AgentRejected when the server refuses."""
        failures = 0
        while not self._closing:
            try:
                if self.discover is not None and (failures or not self.servers):
                    await self._rediscover()
                await self._connect_once()
                failures = 0
            except grpc.aio.AioRpcError as exc:
                if exc.code() in FATAL:
                    raise AgentRejected(f"{exc.code().name}: {exc.details()}") from exc
                failures += 1
                log.warning(
                    "connection to %s lost: %s %s", self.server, exc.code().name, exc.details()
                )
                await self._next_server()
            except NoServerFound as exc:
                failures += 1
                log.warning("%s", exc)
            finally:
                self.connected.clear()
            if self._closing:
                break
            await asyncio.sleep(
                backoff.delay(
                    max(1, failures), self.settings.reconnect_base_s, self.settings.reconnect_cap_s
                )
            )

    async def _connect_once(self) -> None:
        status: pb.WorkerStatus = await self.stub.RegisterWorker(
            pb.RegisterWorkerRequest(
                worker_id=self.settings.worker_id,
                hostname=socket.gethostname(),
                capacity=self.capacity,
                labels=self.settings.label_map,
                runtimes=self.runtimes(),
                version=__version__,
                running_jobs=self.reported_jobs(),
            ),
            metadata=self.metadata,
            timeout=10.0,
        )
        self.session_id = status.session_id
        for job in status.revoked_jobs:
            log.info(
                "invocation %s attempt %d is no longer ours: stopping it",
                job.invocation_id,
                job.attempt,
                extra=inv(job.invocation_id, job.attempt),
            )
            self.unacked.pop((job.invocation_id, job.attempt), None)
            self._sent_at.pop((job.invocation_id, job.attempt), None)
            self.on_cancel(
                pb.CancelJobRequest(
                    invocation_id=job.invocation_id, attempt=job.attempt, reason="revoked"
                )
            )
        self._outbox = asyncio.Queue()
        call = self.stub.JobStream(metadata=self.metadata)
        await call.write(
            pb.AgentMessage(
                status=pb.WorkerStatus(
                    worker_id=self.settings.worker_id,
                    session_id=self.session_id,
                    state=pb.WORKER_STATE_AVAILABLE,
                )
            )
        )
        if self._draining:
            await call.write(
                pb.AgentMessage(
                    status=pb.WorkerStatus(
                        worker_id=self.settings.worker_id,
                        session_id=self.session_id,
                        state=pb.WORKER_STATE_DRAINING,
                    )
                )
            )
        self._connections += 1
        if self._connections > 1:
            metrics.RECONNECTS.inc()
        self.connected.set()
        log.info(
            "connected to %s as %s (session %s…)",
            self.server,
            self.settings.worker_id,
            self.session_id[:8],
        )
        now = asyncio.get_running_loop().time()
        for key, result in list(self.unacked.items()):
            self._sent_at[key] = now
            self._outbox.put_nowait(pb.AgentMessage(result=result))
        writer = asyncio.create_task(self._write(call))
        try:
            async for message in call:
                await self._dispatch(message)
        finally:
            self.connected.clear()
            self._outbox.put_nowait(None)
            await asyncio.gather(writer, return_exceptions=True)

    async def _write(self, call: Any) -> None:
        while (message := await self._outbox.get()) is not None:
            batch, ended = drain(message, self._outbox)
            if len(batch) == 1:
                await call.write(message)
            else:
                await call.write(pb.AgentMessage(batch=pb.AgentMessages(messages=batch)))
            if ended:
                break
        with contextlib.suppress(Exception):
            await call.done_writing()

    async def _dispatch(self, message: pb.ServerMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "batch":
            for inner in message.batch.messages:
                await self._dispatch(inner)
        elif kind == "assign":
            await self.on_assign(message.assign)
        elif kind == "cancel":
            self.on_cancel(message.cancel)
        elif kind == "prewarm":
            if self.on_prewarm is not None:
                self.on_prewarm(message.prewarm)
        elif kind == "ack":
            ack = message.ack
            if ack.retry:
                return  # kept: sent again after result_resend_s
            self.unacked.pop((ack.invocation_id, ack.attempt), None)
            self._sent_at.pop((ack.invocation_id, ack.attempt), None)
            metrics.BUFFERED_RESULTS.set(len(self.unacked))
            if not ack.recorded:
                log.info(
                    "invocation %s attempt %d: result not recorded (%s)",
                    ack.invocation_id,
                    ack.attempt,
                    ack.reason,
                    extra=inv(ack.invocation_id, ack.attempt),
                )
