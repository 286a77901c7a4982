"""TLS and tokens as HashiCorp's own tools honour them: the Consul and Nomad doubles served
over TLS with a private CA made here, and client certificates required. The standard
variables (``CONSUL_*``, ``NOMAD_*``) must reach py-consul (sync and asyncio) and
python-nomad: the wrong CA is refused, the right one accepted, the client certificate
presented."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import requests
from conftest import ROOT, AgentProcess, wait_for
from consul_double import ConsulDouble, running_consul
from nomad_double import Node, running_nomad
from private_ca import PrivateCA, make_ca

from hodei import nomad as nomad_deploy
from hodei.cli import build_parser
from hodei.consul import connect, connect_sync
from hodei.plugin.server import ControlPlane

REFUSED = (aiohttp.ClientError, ssl.SSLError, OSError)


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[PrivateCA, PrivateCA]:
    root = tmp_path_factory.mktemp("ca")
    return make_ca(root / "right"), make_ca(root / "wrong", "someone-else")


@pytest.fixture
def right(cas: tuple[PrivateCA, PrivateCA]) -> PrivateCA:
    return cas[0]


@pytest.fixture
def wrong(cas: tuple[PrivateCA, PrivateCA]) -> PrivateCA:
    return cas[1]


@pytest.fixture
async def tls_consul(right: PrivateCA) -> AsyncIterator[ConsulDouble]:
    async with running_consul(tls=right.server_context()) as double:
        yield double


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in (
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_TOKEN",
        "CONSUL_HTTP_TOKEN_FILE",
        "CONSUL_HTTP_SSL",
        "CONSUL_HTTP_SSL_VERIFY",
        "CONSUL_CACERT",
        "CONSUL_CAPATH",
        "CONSUL_CLIENT_CERT",
        "CONSUL_CLIENT_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


def consul_env(
    monkeypatch: pytest.MonkeyPatch, url: str, ca: Path | None, client: PrivateCA | None
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_ADDR", url)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "consul-secret")
    if ca is not None:
        monkeypatch.setenv("CONSUL_CACERT", str(ca))
    if client is not None:
        monkeypatch.setenv("CONSUL_CLIENT_CERT", str(client.client_cert))
        monkeypatch.setenv("CONSUL_CLIENT_KEY", str(client.client_key))


async def checks_async(token: str = "") -> dict[str, object]:
    """An authenticated call (the token travels with it) through the asyncio client."""
    client = connect("", token=token)
    try:
        checks: dict[str, object] = await client.agent.checks()
        return checks
    finally:
        await client.close()


async def checks_sync() -> dict[str, object]:
    """The same through the blocking client (in a thread: the double shares our loop)."""
    checks: dict[str, object] = await asyncio.to_thread(lambda: connect_sync().agent.checks())
    return checks


async def test_consul_clients_verify_the_private_ca_and_present_the_client_cert(
    tls_consul: ConsulDouble, right: PrivateCA, wrong: PrivateCA, clean_env: pytest.MonkeyPatch
) -> None:
    # The right CA and a client certificate: both clients get through, token and all.
    consul_env(clean_env, tls_consul.url, right.ca, right)
    assert await checks_async() == {}
    assert await checks_sync() == {}
    assert tls_consul.tokens.count("consul-secret") == 2
    assert tls_consul.tokens.count("client-cert:hodei-client") == 2

    # A CA that did not sign the server's certificate: refused (the system's roots are
    # not consulted either, as with CONSUL_CACERT in Consul's CLI).
    consul_env(clean_env, tls_consul.url, wrong.ca, right)
    with pytest.raises(REFUSED):
        await checks_async()
    with pytest.raises(requests.exceptions.SSLError):
        await checks_sync()

    # No client certificate: the server refuses the handshake.
    clean_env.delenv("CONSUL_CLIENT_CERT")
    clean_env.delenv("CONSUL_CLIENT_KEY")
    consul_env(clean_env, tls_consul.url, right.ca, None)
    with pytest.raises(REFUSED):
        await checks_async()
    with pytest.raises(requests.exceptions.RequestException):
        await checks_sync()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
async def test_consul_ssl_flags_as_the_cli_reads_them(
    tls_consul: ConsulDouble, right: PrivateCA, clean_env: pytest.MonkeyPatch
) -> None:
    # host:port plus CONSUL_HTTP_SSL=true is https.
    address = tls_consul.url.removeprefix("https://")
    consul_env(clean_env, address, right.ca, right)
    clean_env.setenv("CONSUL_HTTP_SSL", "true")
    assert await checks_async() == {}
    # CONSUL_HTTP_SSL_VERIFY=false skips verification but still presents the client
    # certificate (py-consul's own asyncio client drops it then).
    consul_env(clean_env, tls_consul.url, None, right)
    clean_env.delenv("CONSUL_CACERT", raising=False)
    clean_env.setenv("CONSUL_HTTP_SSL_VERIFY", "false")
    before = tls_consul.tokens.count("client-cert:hodei-client")
    assert await checks_async() == {}
    assert await checks_sync() == {}
    assert tls_consul.tokens.count("client-cert:hodei-client") == before + 2


async def test_explicit_token_wins_and_token_file_is_read(
    tls_consul: ConsulDouble, right: PrivateCA, clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    consul_env(clean_env, tls_consul.url, right.ca, right)
    await checks_async(token="explicit")
    assert tls_consul.tokens[-2:] == ["explicit", "client-cert:hodei-client"]
    clean_env.delenv("CONSUL_HTTP_TOKEN")
    (tmp_path / "token").write_text("from-a-file\n")
    clean_env.setenv("CONSUL_HTTP_TOKEN_FILE", str(tmp_path / "token"))
    await checks_sync()
    assert "from-a-file" in tls_consul.tokens


async def test_agent_registers_with_consul_over_tls(
    plane: ControlPlane,
    agents: list[AgentProcess],
    tls_consul: ConsulDouble,
    right: PrivateCA,
) -> None:
    """The agent process, configured only by the standard variables, as under Nomad."""
    env = {
        "CONSUL_HTTP_ADDR": tls_consul.url,
        "CONSUL_HTTP_TOKEN": "agent-secret",
        "CONSUL_CACERT": str(right.ca),
        "CONSUL_CLIENT_CERT": str(right.client_cert),
        "CONSUL_CLIENT_KEY": str(right.client_key),
    }
    agents.append(AgentProcess(plane.port, "w1", "--runtimes", "process", env=env))
    check = "hodei-agent-w1-ttl"
    await wait_for(lambda: tls_consul.checks.get(check, {}).get("Status") == "passing", 15)
    assert "agent-secret" in tls_consul.tokens
    assert "client-cert:hodei-client" in tls_consul.tokens


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
async def test_hodei_nomad_verifies_the_private_ca_and_presents_the_client_cert(
    right: PrivateCA, wrong: PrivateCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def plan(**env: str) -> tuple[int, list[str]]:
        for name in ("CACERT", "CAPATH", "CLIENT_CERT", "CLIENT_KEY", "SKIP_VERIFY"):
            monkeypatch.delenv(f"NOMAD_{name}", raising=False)
        for name, value in env.items():
            monkeypatch.setenv(f"NOMAD_{name}", value)
        args = nomad_deploy_args("plan", "redis")
        before = len(double.tokens)
        code = await asyncio.to_thread(nomad_deploy.run, args)
        return code, double.tokens[before:]

    async with running_nomad([Node("client-1")], tls=right.server_context()) as double:
        monkeypatch.setenv("NOMAD_ADDR", double.url)
        monkeypatch.setenv("NOMAD_TOKEN", "nomad-secret")
        client = {"CLIENT_CERT": str(right.client_cert), "CLIENT_KEY": str(right.client_key)}
        code, seen = await plan(CACERT=str(right.ca), **client)
        assert code == 0 and "nomad-secret" in seen and "client-cert:hodei-client" in seen
        # python-nomad on its own never verifies: with the wrong CA it must now refuse.
        code, seen = await plan(CACERT=str(wrong.ca), **client)
        assert code == 2 and not seen
        code, seen = await plan(CACERT=str(right.ca))  # no client certificate
        assert code == 2 and not seen
        code, seen = await plan(SKIP_VERIFY="true", **client)
        assert code == 0 and "client-cert:hodei-client" in seen


def nomad_deploy_args(*argv: str) -> object:
    return build_parser().parse_args(["nomad", *argv, "--jobspecs", str(ROOT / "jobspecs")])
