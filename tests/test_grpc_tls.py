"""gRPC over mutual TLS, against a real grpc.aio server on 127.0.0.1:0 and real agent
processes: plaintext and foreign certificates refused, health on a plaintext port for
Consul and Nomad, an invocation end to end, renewed certificate files taken without a
restart."""

from __future__ import annotations

import socket
import ssl
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from conftest import AgentProcess, deploy, final, invoke, start_agent, wait_for
from consul_double import running_consul
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_kit import (  # noqa: F401 - the *_fixture names are fixtures
    agent_files,
    code_of,
    control_fixture,
    own_agents_fixture,
    pki_fixture,
    registration,
    started,
    tls_flags,
    tls_settings,
)

from hodei import certs
from hodei.errors import ConfigError
from hodei.plugin.models import Status
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings
from hodei.proto import hodei_pb2_grpc as pb_grpc
from hodei.tls import TlsFiles, open_channel


async def test_plaintext_and_foreign_certificates_are_refused_by_a_tls_server(
    pki: Path, settings: ServerSettings, control: list[ControlPlane], own_agents: list[AgentProcess]
) -> None:
    plane = await started(control, tls_settings(settings, pki))
    address = f"127.0.0.1:{plane.port}"
    unavailable = grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.WorkerServiceStub(channel)
        assert await code_of(stub.RegisterWorker(registration("w1"), timeout=5)) == unavailable
    no_certificate = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())
    async with grpc.aio.secure_channel(address, no_certificate) as channel:
        stub = pb_grpc.WorkerServiceStub(channel)
        assert await code_of(stub.RegisterWorker(registration("w1"), timeout=5)) == unavailable
    async with open_channel(address, agent_files(pki, "w1", ca=pki / "rogue")) as channel:
        stub = pb_grpc.WorkerServiceStub(channel)
        assert await code_of(stub.RegisterWorker(registration("w1"), timeout=5)) == unavailable
    # A plaintext agent process gets nowhere (and keeps trying, as for a server away).
    agent = AgentProcess(plane.port, "w1")
    own_agents.append(agent)
    await wait_for(lambda: "UNAVAILABLE" in agent.output(), 20)
    assert await plane.data.workers.get("w1") is None
    # Consul's and Nomad's checks ask the plaintext health port; with a certificate, the
    # TLS port answers health too.
    for port, files in ((plane.health_port, None), (plane.port, agent_files(pki, "w1"))):
        async with open_channel(f"127.0.0.1:{port}", files) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(
                health_pb2.HealthCheckRequest(service="hodei.v1.WorkerService")
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.health_port}") as channel:
        stub = pb_grpc.WorkerServiceStub(channel)  # the health port serves nothing else
        assert (
            await code_of(stub.RegisterWorker(registration("w1"))) == grpc.StatusCode.UNIMPLEMENTED
        )


async def test_agent_over_mutual_tls_runs_an_invocation(
    pki: Path, settings: ServerSettings, control: list[ControlPlane], own_agents: list[AgentProcess]
) -> None:
    plane = await started(control, tls_settings(settings, pki))
    await start_agent(plane, own_agents, "w1", *tls_flags(pki, "w1"))
    fn = await deploy(plane, "shout", command=["tr", "a-z", "A-Z"])
    inv_id = await invoke(plane, fn, b"over tls")
    inv = await final(plane, inv_id, 30)
    assert inv.status is Status.SUCCEEDED and inv.worker_id == "w1"
    assert (await plane.data.invocations.result(inv_id))[1] == b"OVER TLS"


def served_certificate(port: int, pki: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    files = agent_files(pki, "w1")
    context.load_cert_chain(files.cert, files.key)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return ssl.DER_cert_to_PEM_cert(der).encode()


async def test_renewed_certificate_files_are_served_without_a_restart(
    pki: Path, tmp_path: Path, settings: ServerSettings, control: list[ControlPlane]
) -> None:
    folder = tmp_path / "server"
    folder.mkdir()
    for name in ("ca.pem", "ca-key.pem"):
        (folder / name).write_bytes((pki / name).read_bytes())
    certs.issue(folder, "server", "localhost", ["localhost", "127.0.0.1"])
    plane = await started(
        control,
        tls_settings(
            settings,
            pki,
            tls_cert_file=str(folder / "server.pem"),
            tls_key_file=str(folder / "server-key.pem"),
        ),
    )
    first = (folder / "server.pem").read_bytes()
    assert served_certificate(plane.port, pki).strip() == first.strip()
    certs.issue(folder, "server", "localhost", ["localhost", "127.0.0.1"], force=True)
    renewed = (folder / "server.pem").read_bytes()
    assert renewed != first
    assert served_certificate(plane.port, pki).strip() == renewed.strip()
    async with open_channel(f"127.0.0.1:{plane.port}", agent_files(pki, "w1")) as channel:
        status = await pb_grpc.WorkerServiceStub(channel).RegisterWorker(registration("w1"))
        assert status.session_id


def install(files: TlsFiles, cert: Path, key: Path) -> None:
    """Write a certificate and its key in place (as a renewal by a supervisor does)."""
    key.write_bytes(Path(files.key).read_bytes())
    cert.write_bytes(Path(files.cert).read_bytes())


async def test_agent_picks_up_renewed_certificate_files(
    pki: Path,
    tmp_path: Path,
    settings: ServerSettings,
    control: list[ControlPlane],
    own_agents: list[AgentProcess],
) -> None:
    plane = await started(control, tls_settings(settings, pki))
    # Its files start as a certificate the server does not accept (another CA's)...
    rogue = agent_files(pki, "w1", ca=pki / "rogue")
    cert, key = tmp_path / "agent.pem", tmp_path / "agent-key.pem"
    install(rogue, cert, key)
    flags = ("--tls-ca-file", str(pki / "ca.pem"), "--tls-cert-file", str(cert))
    agent = AgentProcess(plane.port, "w1", *flags, "--tls-key-file", str(key))
    own_agents.append(agent)
    await wait_for(lambda: "UNAVAILABLE" in agent.output(), 20)
    # ...then are renewed in place: the next attempt connects, no restart.
    good = agent_files(pki, "w1")
    install(good, cert, key)

    async def connected() -> bool:
        w = await plane.data.workers.get("w1")
        return bool(w and w.state == "available")

    await wait_for(connected, 30)
    assert agent.proc.poll() is None


async def test_consul_checks_a_tls_server_on_its_plaintext_health_port(
    pki: Path, settings: ServerSettings, control: list[ControlPlane]
) -> None:
    async with running_consul() as consul:
        with_consul = tls_settings(settings, pki, consul_addr=consul.url)
        with pytest.raises(ConfigError, match="grpc_health_port"):
            ControlPlane(replace(with_consul, grpc_health_port=-1))
        plane = await started(control, replace(with_consul, consul_check_interval_s=0.2))
        check_id = f"hodei-server-{plane.settings.server_id}-grpc"

        async def passing() -> bool:
            check = consul.checks.get(check_id)
            return bool(check and check["Status"] == "passing")

        await wait_for(passing, 15)
        assert consul.checks[check_id]["Definition"]["grpc"].endswith(f":{plane.health_port}")
        await plane.stop(0.5)
        control.remove(plane)
