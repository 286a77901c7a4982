"""The agent credentials a server accepts, as an operator configures them: token entries
bound to workers (from settings or a file, never echoed), the fleet token's rules, TLS
files, a server that will not take unauthenticated agents beyond loopback, and
``hodei certs``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import ROOT, require

from hodei.domain import WorkerState
from hodei.errors import ConfigError
from hodei.plugin.agent_identity import AgentIdentities, Caller, bind_tokens, foreign_worker
from hodei.plugin.data.records import WorkerRecord
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings
from hodei.proto import hodei_pb2 as pb

SECRET = "do-not-print-me"


def bearer(token: str, session: str = "") -> list[tuple[str, str]]:
    metadata = [("authorization", f"Bearer {token}")]
    return [*metadata, ("hodei-session", session)] if session else metadata


def cert(common_name: str) -> dict[str, list[bytes]]:
    return {"x509_common_name": [common_name.encode()]}


@pytest.mark.parametrize("entry", [SECRET, f"{SECRET}:", f":{SECRET}", f" {SECRET} : "])
def test_a_token_must_name_its_worker_and_is_never_echoed(entry: str) -> None:
    with pytest.raises(ConfigError) as info:
        bind_tokens(["t1:w1", entry])
    assert "entry 2" in str(info.value) and SECRET not in str(info.value)


def test_tokens_identify_their_own_worker_only() -> None:
    ids = AgentIdentities(bind_tokens(["t1:w1", "tf:*"]), operator_tokens=["op"])
    w1 = ids.identify(bearer("t1"), {})
    assert w1 is not None and w1.worker == "w1" and not w1.operator and not w1.fleet
    assert ids.acts_as(w1, "w1") is None and ids.acts_as(w1, "w2") is not None
    assert ids.identify(bearer("t2"), {}) is None
    assert ids.identify([], {}) is None
    assert ids.identify([("authorization", "Basic t1")], {}) is None
    assert ids.identify(bearer("tö"), {}) is None  # non-ASCII: refused, not an error
    operator = ids.identify(bearer("op"), {})
    assert operator is not None and operator.operator and ids.acts_as(operator, "w1") is not None
    fleet = ids.identify(bearer("tf"), {})
    assert fleet is not None and fleet.fleet
    # A fleet token never speaks for a worker that has a token of its own.
    assert ids.acts_as(fleet, "w9") is None and ids.acts_as(fleet, "w1") is not None


def test_certificates_name_the_worker_and_operators() -> None:
    ids = AgentIdentities({}, operator_names=["hodei-operator"], tls=True)
    w1 = ids.identify([], cert("w1"))
    assert w1 is not None and w1.worker == "w1" and w1.via == "certificate w1"
    operator = ids.identify([], cert("hodei-operator"))
    assert operator is not None and operator.operator and operator.worker == ""
    assert ids.identify([], {}) is None  # no certificate common name
    assert ids.identify([], {"x509_common_name": [b"a", b"b"]}) is None
    assert ids.identify([], cert("*")) is None  # no wildcard certificates
    # Both TLS and tokens: both are needed, naming the same worker.
    both = AgentIdentities(bind_tokens(["t1:w1"]), ["op"], tls=True)
    assert both.identify(bearer("t1"), cert("w1")) is not None
    assert both.identify(bearer("t1"), cert("w2")) is None
    assert both.identify([], cert("w1")) is None
    operator = both.identify(bearer("op"), cert("w2"))
    assert operator is not None and operator.operator and operator.worker == ""


def test_without_agent_authentication_anyone_is_any_worker() -> None:
    open_ = AgentIdentities({})
    caller = open_.identify([], {})
    assert caller == Caller("*", True, "none", False, "")
    assert open_.acts_as(caller, "w1") is None
    # Operator tokens alone protect the operator RPCs.
    guarded = AgentIdentities({}, operator_tokens=["op"])
    anyone = guarded.identify([], {})
    assert anyone is not None and not anyone.operator
    operator = guarded.identify(bearer("op"), {})
    assert operator is not None and operator.operator


def record(state: WorkerState, session: str = "s1") -> WorkerRecord:
    return WorkerRecord(id="w9", state=state, session_id=session)


@pytest.mark.parametrize(
    ("state", "holds_leases", "session", "allowed"),
    [
        (WorkerState.AVAILABLE, False, "", False),  # alive: taken
        (WorkerState.RUNNING, True, "wrong", False),
        (WorkerState.DRAINING, False, "", False),
        (WorkerState.REGISTERING, False, "", False),
        (WorkerState.UNHEALTHY, True, "", False),  # silent, but its leases are not up for grabs
        (WorkerState.UNHEALTHY, False, "", True),  # gone, holding nothing
        (WorkerState.FAILED, False, "", True),
        (WorkerState.TERMINATED, False, "", True),
        (WorkerState.RUNNING, True, "s1", True),  # its own agent, reconnecting
        (WorkerState.UNHEALTHY, True, "s1", True),
    ],
)
def test_a_fleet_token_takes_over_only_a_worker_that_is_gone(
    state: WorkerState, holds_leases: bool, session: str, allowed: bool
) -> None:
    ids = AgentIdentities(bind_tokens(["tf:*"]))
    caller = ids.identify(bearer("tf", session), {})
    assert caller is not None
    refusal = ids.registers(caller, "w9", record(state), holds_leases)
    assert (refusal is None) is allowed
    assert ids.registers(caller, "new", None, False) is None  # a worker id never seen
    # Its status: only with the worker's session.
    assert ids.reads_status(caller, "w9", record(state)) is (session == "s1")


def test_bound_callers_register_again_whatever_the_state() -> None:
    ids = AgentIdentities(bind_tokens(["t9:w9"]))
    caller = ids.identify(bearer("t9"), {})
    assert caller is not None
    assert ids.registers(caller, "w9", record(WorkerState.RUNNING), True) is None
    assert ids.reads_status(caller, "w9", None) and not ids.reads_status(caller, "w8", None)


def test_stream_messages_name_their_own_worker() -> None:
    beat = pb.AgentMessage(heartbeat=pb.Heartbeat(worker_id="w1"))
    assert foreign_worker(beat, "w1") == ""
    assert foreign_worker(pb.AgentMessage(heartbeat=pb.Heartbeat()), "w1") == ""
    accepted = pb.AgentMessage(accepted=pb.JobAccepted(invocation_id="i", worker_id="w2"))
    batch = pb.AgentMessage(batch=pb.AgentMessages(messages=[beat, accepted]))
    assert foreign_worker(batch, "w1") == "w2"


def test_tokens_from_files(settings: ServerSettings, tmp_path: Path) -> None:
    agents = tmp_path / "agent-tokens"
    agents.write_text("# one a line\nt1:w1\n\nt2:w2\n")
    operators = tmp_path / "operator-tokens"
    operators.write_text("op\n")
    s = replace(settings, agent_tokens_file=str(agents), operator_tokens_file=str(operators))
    ids = AgentIdentities.from_settings(s)
    assert ids.agent_tokens == {"t1": "w1", "t2": "w2"} and "op" in ids.operator_tokens
    with pytest.raises(ConfigError, match="agent_tokens_file"):
        AgentIdentities.from_settings(replace(s, agent_tokens_file=str(tmp_path / "none")))


def test_server_refuses_unauthenticated_agents_beyond_loopback(settings: ServerSettings) -> None:
    with pytest.raises(ConfigError, match="--insecure"):
        ControlPlane(replace(settings, grpc_host="0.0.0.0"))
    ControlPlane(replace(settings, grpc_host="0.0.0.0", insecure=True))
    ControlPlane(replace(settings, grpc_host="0.0.0.0", agent_tokens=("t1:w1",)))
    ControlPlane(replace(settings, grpc_host="::1"))


def test_tls_files_must_be_complete_and_readable(settings: ServerSettings, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing tls_key_file"):
        ControlPlane(replace(settings, tls_ca_file="ca.pem", tls_cert_file="server.pem"))
    with pytest.raises(ConfigError, match="cannot read"):
        ControlPlane(
            replace(settings, tls_ca_file="/nope", tls_cert_file="/nope", tls_key_file="/nope")
        )
    (tmp_path / "junk.pem").write_text("not a certificate")
    junk = str(tmp_path / "junk.pem")
    with pytest.raises(ConfigError, match="not a PEM file"):
        ControlPlane(replace(settings, tls_ca_file=junk, tls_cert_file=junk, tls_key_file=junk))


def certs(*args: str) -> tuple[int, str]:
    """``hodei certs ARGS`` as its own process: exit code, output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HODEI_")}
    done = subprocess.run(
        [sys.executable, "-m", "hodei.cli", "certs", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout


def openssl(*args: str | Path) -> str:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_hodei_certs_makes_a_ca_and_certificates(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    code, out = certs("agent", "w1", "--dir", str(folder))
    assert code == 2 and "hodei certs ca" in out  # no CA yet: says how to make one
    code, out = certs("ca", "--dir", str(folder))
    assert code == 0 and "ca-key.pem" in out
    code, out = certs("server", "hodei.example", "10.0.0.7", "--dir", str(folder))
    assert code == 0 and "--tls-cert-file" in out
    code, out = certs("agent", "w1", "--dir", str(folder))
    assert code == 0 and "--worker-id w1" in out
    code, out = certs("operator", "--dir", str(folder))
    assert code == 0 and "operator_names" in out
    code, out = certs("ca", "--dir", str(folder))
    assert code == 2 and "--force" in out  # never replaces a CA by accident
    for key in folder.glob("*-key.pem"):
        assert key.stat().st_mode & 0o777 == 0o600
    # What another TLS stack makes of the files.
    require("the openssl command", shutil.which("openssl") is not None)
    agent = openssl(
        "x509", "-in", folder / "agent-w1.pem", "-noout", "-subject", "-ext", "extendedKeyUsage"
    )
    assert "CN = w1" in agent and "TLS Web Client Authentication" in agent
    server = openssl("x509", "-in", folder / "server.pem", "-noout", "-ext", "subjectAltName")
    assert "DNS:hodei.example" in server and "IP Address:10.0.0.7" in server
    for leaf in ("server", "agent-w1", "operator-hodei-operator"):
        openssl("verify", "-CAfile", folder / "ca.pem", folder / f"{leaf}.pem")
