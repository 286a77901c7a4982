"""Agents are who they say, against a real grpc.aio server on 127.0.0.1:0 and real agent
processes: the impostor of the audit (another worker's id, its running lease, a forged
result) is refused whatever the credentials; a worker can act only as itself; status and
pins need operator credentials; a fleet token keeps its own worker and takes no other."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import AgentProcess, Gate, deploy, final, invoke, logs, start_agent, wait_for
from grpc_kit import (  # noqa: F401 - the *_fixture names are fixtures
    DENIED,
    GATED,
    agent_files,
    bearer,
    code_of,
    control_fixture,
    own_agents_fixture,
    pki_fixture,
    registration,
    started,
    stream_opening,
    tls_flags,
    tls_settings,
)

from hodei.plugin.models import Status
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings
from hodei.proto import hodei_pb2 as pb
from hodei.proto import hodei_pb2_grpc as pb_grpc
from hodei.tls import TlsFiles, open_channel

OPERATOR_TOKEN = "operator-secret-token"
TOKENS = ("w1-secret-token:w1", "evil-secret-token:evil")
FLEET = "fleet-secret-token"


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
