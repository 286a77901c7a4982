"""What the tests of agent credentials share: a PKI made by ``hodei certs`` (a CA, its
server, agent and operator certificates, and a rogue CA's certificate for w1), control
planes started with a test's own settings, agent processes, and gRPC helpers. A test
module imports the ``*_fixture`` functions to use the fixtures ``pki``, ``control`` and
``own_agents``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import AgentProcess, wait_for

from hodei import certs
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings
from hodei.proto import hodei_pb2 as pb
from hodei.tls import TlsFiles

CAPACITY = pb.Resources(cpu_millicores=1000, memory_mb=512, job_slots=1)
DENIED = grpc.StatusCode.PERMISSION_DENIED
# The gate (conftest) lives under /var/tmp, which the sandbox makes private by default.
GATED = ("--job-slots", "1", "--process-private-dirs", "/tmp")


@pytest.fixture(scope="module", name="pki")
def pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA made by ``hodei certs``, its server, agent and operator certificates; and a
    rogue CA's certificate for w1."""
    folder = tmp_path_factory.mktemp("pki")
    certs.make_ca(folder, "hodei-test-ca")
    certs.issue(folder, "server", "localhost", ["localhost", "127.0.0.1"])
    for worker in ("w1", "w2", "evil"):
        certs.issue(folder, "agent", worker, [])
    certs.issue(folder, "operator", "hodei-operator", [])
    rogue = folder / "rogue"
    certs.make_ca(rogue, "rogue-ca")
    certs.issue(rogue, "agent", "w1", [])
    return folder


def agent_files(pki: Path, who: str, kind: str = "agent", ca: Path | None = None) -> TlsFiles:
    folder = ca or pki
    return TlsFiles(
        str(pki / "ca.pem"),
        str(folder / f"{kind}-{who}.pem"),
        str(folder / f"{kind}-{who}-key.pem"),
    )


def tls_flags(pki: Path, who: str) -> tuple[str, ...]:
    files = agent_files(pki, who)
    return ("--tls-ca-file", files.ca, "--tls-cert-file", files.cert, "--tls-key-file", files.key)


def tls_settings(settings: ServerSettings, pki: Path, **more: Any) -> ServerSettings:
    tls = {
        "tls_ca_file": str(pki / "ca.pem"),
        "tls_cert_file": str(pki / "server.pem"),
        "tls_key_file": str(pki / "server-key.pem"),
        "grpc_health_port": 0,
    }
    return replace(settings, **{**tls, **more})


@pytest.fixture(name="control")
async def control_fixture(settings: ServerSettings) -> AsyncIterator[list[ControlPlane]]:
    """Control planes a test starts with its own settings; stopped after its agents."""
    planes: list[ControlPlane] = []
    yield planes
    for plane in planes:
        await plane.stop(0.5)


async def started(control: list[ControlPlane], settings: ServerSettings) -> ControlPlane:
    plane = ControlPlane(settings)
    control.append(plane)
    await plane.start()
    await wait_for(lambda: plane.leader.is_leader, 5)
    return plane


@pytest.fixture(name="own_agents")
async def own_agents_fixture(control: list[ControlPlane]) -> AsyncIterator[list[AgentProcess]]:
    """Agents of the test; they stop before its control planes."""
    started_agents: list[AgentProcess] = []
    yield started_agents
    await asyncio.gather(*(agent.stop() for agent in started_agents))


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def registration(worker_id: str, *running: tuple[str, int]) -> pb.RegisterWorkerRequest:
    return pb.RegisterWorkerRequest(
        worker_id=worker_id,
        capacity=CAPACITY,
        runtimes=["process"],
        running_jobs=[pb.RunningJob(invocation_id=i, attempt=a) for i, a in running],
    )


async def code_of(awaitable: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return info.value.code()


def stream_opening(worker_id: str, session_id: str) -> pb.AgentMessage:
    return pb.AgentMessage(status=pb.WorkerStatus(worker_id=worker_id, session_id=session_id))
