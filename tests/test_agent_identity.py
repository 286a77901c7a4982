"""Agents are who they say, against a real grpc.aio server on 127.0.0.1:0 and real agent
processes: the impostor of the audit (another worker's id, its running lease, a forged
result) is refused whatever the credentials; a worker can act only as itself; status and
pins need operator credentials; mutual TLS end to end."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import (
    AgentProcess,
    Gate,
    deploy,
    final,
    invoke,
    logs,
    start_agent,
    wait_for,
)
from consul_double import running_consul
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hodei import certs
from hodei.errors import ConfigError
from hodei.plugin.models import Status
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings
from hodei.proto import hodei_pb2 as pb
from hodei.proto import hodei_pb2_grpc as pb_grpc
from hodei.tls import TlsFiles, open_channel

CAPACITY = pb.Resources(cpu_millicores=1000, memory_mb=512, job_slots=1)
DENIED = grpc.StatusCode.PERMISSION_DENIED
OPERATOR_TOKEN = "operator-secret-token"
TOKENS = ("w1-secret-token:w1", "evil-secret-token:evil")
FLEET = "fleet-secret-token"
# The gate (conftest) lives under /var/tmp, which the sandbox makes private by default.
GATED = ("--job-slots", "1", "--process-private-dirs", "/tmp")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
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


@dataclass
class Credentials:
    """How the server is configured, how the real agent of w1 proves itself, and what an
    impostor holding a valid credential of its own has."""

    server: dict[str, Any]
    agent_token: str
    agent_flags: tuple[str, ...]
    impostor_token: str
    impostor_files: TlsFiles | None


def credentials(kind: str, pki: Path) -> Credentials:
    if kind == "tokens":
        return Credentials(
            {"agent_tokens": TOKENS}, "w1-secret-token", (), "evil-secret-token", None
        )
    if kind == "fleet":
        return Credentials({"agent_tokens": (f"{FLEET}:*",)}, FLEET, (), FLEET, None)
    tls = {
        "tls_ca_file": str(pki / "ca.pem"),
        "tls_cert_file": str(pki / "server.pem"),
        "tls_key_file": str(pki / "server-key.pem"),
    }
    return Credentials(tls, "", tls_flags(pki, "w1"), "", agent_files(pki, "evil"))


@pytest.fixture
async def control(settings: ServerSettings) -> AsyncIterator[list[ControlPlane]]:
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


@pytest.fixture
async def own_agents(control: list[ControlPlane]) -> AsyncIterator[list[AgentProcess]]:
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


@pytest.mark.parametrize("kind", ["tokens", "fleet", "certificates"])
async def test_impostor_with_another_workers_lease_cannot_forge_its_result(
    kind: str,
    pki: Path,
    settings: ServerSettings,
    control: list[ControlPlane],
    own_agents: list[AgentProcess],
    gate: Gate,
) -> None:
    creds = credentials(kind, pki)
    plane = await started(control, replace(settings, **creds.server))
    await start_agent(plane, own_agents, "w1", *GATED, *creds.agent_flags, token=creds.agent_token)
    fn = await deploy(plane, "work", command=gate.command("echo go >&2", "echo REAL"))
    inv_id = await invoke(plane, fn, b"")

    async def running_on_w1() -> bool:
        inv = await plane.data.invocations.get(inv_id)
        return (
            inv.status is Status.RUNNING
            and inv.worker_id == "w1"
            and bool(await logs(plane, inv_id))
        )

    await wait_for(running_on_w1, 30)
    auth = bearer(creds.impostor_token)
    async with open_channel(f"127.0.0.1:{plane.port}", creds.impostor_files) as channel:
        stub = pb_grpc.WorkerServiceStub(channel)
        # The audit's attack: register as w1, claiming its running lease.
        code = await code_of(stub.RegisterWorker(registration("w1", (inv_id, 1)), metadata=auth))
        assert code == (grpc.StatusCode.ALREADY_EXISTS if kind == "fleet" else DENIED)
        # Nor can it beat or stream as w1 with a session it does not know.
        beat = pb.Heartbeat(
            worker_id="w1",
            session_id="guessed",
            running_jobs=[pb.RunningJob(invocation_id=inv_id, attempt=1)],
        )
        assert await code_of(stub.Heartbeat(beat, metadata=auth)) in (
            DENIED,
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        call = stub.JobStream(metadata=auth)
        await call.write(stream_opening("w1", "guessed"))
        assert await code_of(call.read()) in (DENIED, grpc.StatusCode.FAILED_PRECONDITION)
        # Its credential is valid for its own worker; a result sent from there is not taken.
        own = await stub.RegisterWorker(registration("evil"), metadata=auth)
        call = stub.JobStream(metadata=auth)
        await call.write(stream_opening("evil", own.session_id))
        forged = pb.JobResult(
            invocation_id=inv_id,
            attempt=1,
            outcome=pb.JOB_OUTCOME_SUCCEEDED,
            output=b"FORGED BY IMPOSTOR",
        )
        await call.write(pb.AgentMessage(result=forged))
        reply = await call.read()
        assert reply.ack.invocation_id == inv_id and not reply.ack.recorded
        await call.done_writing()

    gate.open()
    inv = await final(plane, inv_id, 30)
    assert inv.status is Status.SUCCEEDED and inv.worker_id == "w1"
    assert (await plane.data.invocations.result(inv_id))[1] == b"REAL\n"


async def cannot_act_as_w2(stub: pb_grpc.WorkerServiceStub, auth: Any) -> None:
    """What the caller, w1's agent, is refused: anything as w2, and the operator RPCs."""
    assert await code_of(stub.RegisterWorker(registration("w2"), metadata=auth)) == DENIED
    own = await stub.RegisterWorker(registration("w1"), metadata=auth)
    beat = pb.Heartbeat(worker_id="w2", session_id=own.session_id)
    assert await code_of(stub.Heartbeat(beat, metadata=auth)) == DENIED
    call = stub.JobStream(metadata=auth)
    await call.write(stream_opening("w2", own.session_id))
    assert await code_of(call.read()) == DENIED
    # Its own stream carries its own messages only, batched or not.
    for foreign in (
        pb.AgentMessage(heartbeat=pb.Heartbeat(worker_id="w2", session_id=own.session_id)),
        pb.AgentMessage(
            batch=pb.AgentMessages(
                messages=[
                    pb.AgentMessage(
                        heartbeat=pb.Heartbeat(worker_id="w1", session_id=own.session_id)
                    ),
                    pb.AgentMessage(
                        status=pb.WorkerStatus(worker_id="w2", state=pb.WORKER_STATE_DRAINING)
                    ),
                ]
            )
        ),
    ):
        own = await stub.RegisterWorker(registration("w1"), metadata=auth)
        call = stub.JobStream(metadata=auth)
        await call.write(stream_opening("w1", own.session_id))
        await call.write(foreign)
        assert await code_of(call.read()) == DENIED
    status = await stub.GetWorkerStatus(pb.GetWorkerStatusRequest(worker_id="w1"), metadata=auth)
    assert status.worker_id == "w1"
    assert (
        await code_of(
            stub.GetWorkerStatus(pb.GetWorkerStatusRequest(worker_id="w2"), metadata=auth)
        )
        == DENIED
    )
    pin = pb.AssignJobRequest(invocation_id="any", worker_id="w1")
    assert await code_of(stub.AssignJob(pin, metadata=auth)) == DENIED


async def test_certificate_of_w1_cannot_act_as_w2(
    pki: Path, settings: ServerSettings, control: list[ControlPlane], own_agents: list[AgentProcess]
) -> None:
    plane = await started(control, tls_settings(settings, pki))
    async with open_channel(f"127.0.0.1:{plane.port}", agent_files(pki, "w1")) as channel:
        await cannot_act_as_w2(pb_grpc.WorkerServiceStub(channel), ())
    # An agent process started as w2 with w1's certificate is refused, and says why.
    agent = AgentProcess(plane.port, "w2", *tls_flags(pki, "w1"))
    own_agents.append(agent)
    await wait_for(lambda: agent.proc.poll() is not None, 20)
    assert agent.proc.returncode == 1 and "PERMISSION_DENIED" in agent.output()
    assert "may not act as worker w2" in agent.output()
    assert await plane.data.workers.get("w2") is None


async def test_token_bound_to_w1_cannot_act_as_w2(
    settings: ServerSettings,
    control: list[ControlPlane],
    own_agents: list[AgentProcess],
    caplog: pytest.LogCaptureFixture,
) -> None:
    plane = await started(control, replace(settings, agent_tokens=TOKENS))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        await cannot_act_as_w2(pb_grpc.WorkerServiceStub(channel), bearer("w1-secret-token"))
    agent = AgentProcess(plane.port, "w2", token="w1-secret-token")
    own_agents.append(agent)
    await wait_for(lambda: agent.proc.poll() is not None, 20)
    assert agent.proc.returncode == 1 and "PERMISSION_DENIED" in agent.output()
    assert "w1-secret-token" not in caplog.text + agent.output()  # refusals name no secret


async def test_status_and_pin_need_operator_credentials(
    pki: Path, settings: ServerSettings, control: list[ControlPlane]
) -> None:
    plane = await started(
        control,
        tls_settings(
            settings, pki, agent_tokens=("w1-secret-token:w1",), operator_tokens=(OPERATOR_TOKEN,)
        ),
    )
    address = f"127.0.0.1:{plane.port}"
    async with open_channel(address, agent_files(pki, "w1")) as channel:
        stub = pb_grpc.WorkerServiceStub(channel)
        w1 = bearer("w1-secret-token")
        await stub.RegisterWorker(registration("w1"), metadata=w1)
        for auth in ((), bearer("wrong-token")):  # with w1's certificate: no agent token
            assert await code_of(stub.RegisterWorker(registration("w1"), metadata=auth)) == (
                grpc.StatusCode.UNAUTHENTICATED
            )
        # w1's own credentials: its own status, not a pin.
        pin = pb.AssignJobRequest(invocation_id="nope", worker_id="w1")
        assert await code_of(stub.AssignJob(pin, metadata=w1)) == DENIED
        # An operator token (with any client certificate) may do both.
        operator = bearer(OPERATOR_TOKEN)
        status = await stub.GetWorkerStatus(
            pb.GetWorkerStatusRequest(worker_id="w1"), metadata=operator
        )
        assert status.state == pb.WORKER_STATE_REGISTERING
        assert await code_of(stub.AssignJob(pin, metadata=operator)) == grpc.StatusCode.NOT_FOUND
    # An operator certificate too; it is no worker.
    async with open_channel(address, agent_files(pki, "hodei-operator", "operator")) as channel:
        stub = pb_grpc.WorkerServiceStub(channel)
        status = await stub.GetWorkerStatus(pb.GetWorkerStatusRequest(worker_id="w1"))
        assert status.worker_id == "w1"
        assert await code_of(stub.AssignJob(pin)) == grpc.StatusCode.NOT_FOUND
        assert await code_of(stub.RegisterWorker(registration("hodei-operator"))) == DENIED


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


async def test_fleet_token_agent_keeps_its_worker_and_a_second_one_waits(
    settings: ServerSettings,
    control: list[ControlPlane],
    own_agents: list[AgentProcess],
    gate: Gate,
    tmp_path: Path,
) -> None:
    plane = await started(control, replace(settings, agent_tokens=(f"{FLEET}:*",)))
    first = await start_agent(plane, own_agents, "w1", *GATED, token=FLEET)
    fn = await deploy(plane, "work", command=gate.command("echo go >&2", "echo DONE"))
    inv_id = await invoke(plane, fn, b"")

    async def running() -> bool:
        inv = await plane.data.invocations.get(inv_id)
        return inv.status is Status.RUNNING and bool(await logs(plane, inv_id))

    await wait_for(running, 30)
    # Its stream drops (the worker turns Unhealthy, its lease held): the agent comes back
    # with its session, which is what lets it register w1 again.
    record = await plane.data.workers.get("w1")
    assert record is not None
    plane.sessions.close_all()

    async def registered_again() -> bool:
        w = await plane.data.workers.get("w1")
        return bool(w and w.session_id != record.session_id and w.state in ("available", "running"))

    await wait_for(registered_again, 20)
    # A second agent with the fleet token and the same worker id is told to wait.
    second = AgentProcess(
        plane.port, "w1", token=FLEET, env={"HODEI_STATE_DIR": str(tmp_path / "second")}
    )
    own_agents.append(second)
    await wait_for(lambda: "ALREADY_EXISTS" in second.output(), 20)
    gate.open()
    inv = await final(plane, inv_id, 30)
    assert (
        inv.status is Status.SUCCEEDED
        and (await plane.data.invocations.result(inv_id))[1] == b"DONE\n"
    )
    # Once the first is gone, the second takes the worker id over.
    first.proc.terminate()
    first.proc.wait(20)
    await wait_for(lambda: "connected to" in second.output(), 30)


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
