"""``hodei nomad plan|deploy|status`` against the in-process Nomad double: placements,
constraints and static ports as Nomad's scheduler decides them, and kill timeouts as
Nomad's clients cap them."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import ROOT
from nomad_double import Node, NomadDouble, running_nomad

from hodei import nomad as nomad_deploy
from hodei.cli import build_parser
from hodei.nomad import describe_failures, variables_hcl

IMAGE = "--var", "image=acme/hodei:2"
AGENT_JOBSPEC = ROOT / "jobspecs" / "hodei-agent.nomad.hcl"


def raw_exec_only() -> dict[str, str]:
    return {"driver.raw_exec": "true", "cpu.frequency": "2400"}


@pytest.fixture
async def nomad_api(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[NomadDouble]:
    nodes = [Node("client-1"), Node("client-2"), Node("client-3", attributes=raw_exec_only())]
    async with running_nomad(nodes) as double:
        monkeypatch.setenv("NOMAD_ADDR", double.url)
        monkeypatch.setenv("NOMAD_TOKEN", "nomad-secret")
        for name in ("NAMESPACE", "REGION", "CACERT", "CAPATH", "CLIENT_CERT", "CLIENT_KEY"):
            monkeypatch.delenv(f"NOMAD_{name}", raising=False)
        monkeypatch.delenv("NOMAD_SKIP_VERIFY", raising=False)
        yield double


async def hodei_nomad(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    args: argparse.Namespace = build_parser().parse_args(
        ["nomad", *argv, "--jobspecs", str(ROOT / "jobspecs"), "--wait-s", "2"]
    )
    code = await asyncio.to_thread(nomad_deploy.run, args)
    return code, capsys.readouterr().out


def variant(tmp_path: Path, source: Path, *replacements: tuple[str, str]) -> str:
    text = source.read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / source.name
    path.write_text(text)
    return str(path)


async def test_plan_parses_with_variables_and_shows_placements(
    nomad_api: NomadDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = await hodei_nomad(capsys, "plan", *IMAGE, "--var", "count=3")
    assert code == 0, out
    # Dynamic ports on host networking: three servers fit on two docker nodes.
    assert "job 'hodei-server': added" in out and "group 'server': place 3" in out
    assert "job 'hodei-gateway': added" in out and "group 'gateway': place 3" in out
    # The agent is a system job: one per node with docker and bind mounts.
    assert "job 'hodei-agent': added" in out and "group 'agent': place 2" in out
    assert "KILL TIMEOUT" not in out  # every shipped jobspec fits the default 30 s cap
    # Each jobspec got only the variables it declares (Nomad refuses undeclared ones).
    redis_vars, server_vars = nomad_api.parsed_variables[0], nomad_api.parsed_variables[1]
    assert "count" not in redis_vars and "image" not in redis_vars
    assert 'image = "acme/hodei:2"' in server_vars and "count = 3" in server_vars
    assert not nomad_api.jobs  # a plan registers nothing
    assert "nomad-secret" in nomad_api.tokens  # NOMAD_TOKEN is honoured


async def test_namespace_and_region_reach_nomad(
    nomad_api: NomadDouble, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOMAD_NAMESPACE", "team-a")
    monkeypatch.setenv("NOMAD_REGION", "europe")
    code, out = await hodei_nomad(capsys, "plan", "redis")
    assert code == 0, out
    assert nomad_api.scopes and set(nomad_api.scopes) == {("team-a", "europe")}


async def test_the_hodei_image_must_be_given(
    nomad_api: NomadDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = await hodei_nomad(capsys, "plan", "server")
    assert code == 2 and 'input variable "image" is not set' in out


async def test_deploy_registers_and_status_reports_allocations(
    nomad_api: NomadDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = await hodei_nomad(capsys, "deploy", *IMAGE, "--var", 'datacenters=["dc1"]')
    assert code == 0, out
    assert set(nomad_api.jobs) == {"hodei-redis", "hodei-server", "hodei-gateway", "hodei-agent"}
    assert nomad_api.jobs["hodei-agent"]["spec"]["Type"] == "system"
    task = nomad_api.jobs["hodei-agent"]["spec"]["TaskGroups"][0]["Tasks"][0]
    assert task["KillSignal"] == "SIGTERM" and task["KillTimeout"] == 30 * 10**9
    assert "evaluation complete" in out
    code, out = await hodei_nomad(capsys, "status", "agent", "server")
    assert code == 0
    assert "job 'hodei-agent': running (system" in out
    assert out.count("client-1") == 2 and "client-3" not in out  # no docker driver there

    code, out = await hodei_nomad(capsys, "plan", "server", *IMAGE, "--var", 'datacenters=["dc1"]')
    assert "job 'hodei-server': none" in out


async def test_placement_failures_are_reported(
    nomad_api: NomadDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    for node in nomad_api.nodes:
        node.memory_mb = 600  # Redis asks for 1 GiB
    code, out = await hodei_nomad(capsys, "deploy", "redis")
    assert code == 1
    assert "PLACEMENT FAILURE: task group 'redis' cannot be placed: 3 nodes evaluated" in out
    assert "exhausted: memory (2)" in out
    assert "filtered by constraint: missing drivers (1)" in out
    assert "hint: the task driver is not enabled" in out

    code, out = await hodei_nomad(capsys, "plan", "server", *IMAGE, "--var", 'datacenters=["eu-9"]')
    assert code == 1 and "0 nodes evaluated" in out


async def test_constraints_are_evaluated_and_explained(
    nomad_api: NomadDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    client_1, client_2, _ = nomad_api.nodes
    # Clients that do not allow bind mounts cannot run the docker agent (it mounts the
    # Docker socket): as a system job, it runs where it can...
    del client_1.attributes["driver.docker.volumes.enabled"]
    code, out = await hodei_nomad(capsys, "plan", "agent", *IMAGE)
    assert code == 0 and "group 'agent': place 1" in out
    # ...and where it can nowhere, Nomad says why, and so does hodei nomad plan.
    del client_2.attributes["driver.docker.volumes.enabled"]
    code, out = await hodei_nomad(capsys, "plan", "agent", *IMAGE)
    assert code == 1, out
    assert "${attr.driver.docker.volumes.enabled} = true (2)" in out
    assert "missing drivers (1)" in out
    assert "hint: those clients do not allow bind mounts" in out
    assert "volumes { enabled = true }" in out

    # node_class is a regular expression over ${node.class}.
    client_1.attributes["driver.docker.volumes.enabled"] = "true"
    client_2.attributes["driver.docker.volumes.enabled"] = "true"
    client_2.node_class = "gpu"
    code, out = await hodei_nomad(capsys, "deploy", "agent", *IMAGE, "--var", "node_class=^gpu$")
    assert code == 0, out
    assert [a["NodeName"] for a in nomad_api.allocations["hodei-agent"]] == ["client-2"]


async def test_raw_exec_agent_needs_the_driver_enabled(
    nomad_api: NomadDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    for node in nomad_api.nodes:
        node.attributes.pop("driver.raw_exec")  # raw_exec is off unless the client enables it
    code, out = await hodei_nomad(capsys, "plan", "agent-raw-exec")
    assert code == 1 and "missing drivers (3)" in out
    assert 'plugin "raw_exec" { config { enabled = true } }' in out


async def test_static_port_collisions(
    nomad_api: NomadDouble, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out = await hodei_nomad(capsys, "deploy", "agent", *IMAGE)
    assert code == 0, out
    # Another job wanting the agent's static health port on the same nodes.
    other = variant(
        tmp_path,
        ROOT / "jobspecs" / "redis.nomad.hcl",
        ('job "hodei-redis"', 'job "other"'),
        ("static = 6379", "static = 7071"),
        ('port "redis"', 'port "probe"'),
        ('ports = ["redis"]', 'ports = ["probe"]'),
        ('port     = "redis"', 'port     = "probe"'),
    )
    code, out = await hodei_nomad(capsys, "plan", other)
    assert code == 1, out
    assert "exhausted: network: reserved port collision probe=7071 (2)" in out
    assert "hint: a static port is taken on those nodes" in out


async def test_kill_timeout_beyond_the_clients_cap_is_refused(
    nomad_api: NomadDouble, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    long_kill = variant(tmp_path, AGENT_JOBSPEC, ('kill_timeout = "30s"', 'kill_timeout = "45s"'))
    code, out = await hodei_nomad(capsys, "plan", long_kill, *IMAGE)
    assert code == 1
    assert "KILL TIMEOUT: task 'agent/agent': kill_timeout 45s is above the clients' " in out
    assert "max_kill_timeout (30s" in out
    code, out = await hodei_nomad(capsys, "deploy", long_kill, *IMAGE)
    assert code == 1 and "not registered" in out and not nomad_api.jobs
    # Clients that raised client.max_kill_timeout: say so, and it fits.
    code, out = await hodei_nomad(capsys, "plan", long_kill, *IMAGE, "--max-kill-timeout", "60")
    assert code == 0, out

    long_grace = variant(
        tmp_path, AGENT_JOBSPEC, ('HODEI_DRAIN_GRACE_S      = "20"', 'HODEI_DRAIN_GRACE_S = "30"')
    )
    code, out = await hodei_nomad(capsys, "plan", long_grace, *IMAGE)
    assert code == 1
    assert "the agent's drain (grace 30s + hand-back 8s + 2s margin) does not fit the 30s" in out


async def test_nomad_refusals_and_bad_variables_are_clear(
    nomad_api: NomadDouble, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out = await hodei_nomad(capsys, "plan", "server", *IMAGE, "--var", "colour=blue")
    assert code == 2 and "no selected jobspec declares colour" in out
    code, out = await hodei_nomad(capsys, "plan", "nonsense")
    assert code == 2 and "no jobspec" in out
    broken = variant(
        tmp_path, ROOT / "jobspecs" / "hodei-server.nomad.hcl", ("var.consul_addr", "var.consul")
    )
    code, out = await hodei_nomad(capsys, "plan", broken, *IMAGE)
    assert code == 2 and "nomad refused to parse hodei-server.nomad.hcl" in out
    assert 'no variable named "consul"' in out


async def test_unreachable_nomad(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NOMAD_ADDR", "http://127.0.0.1:1")
    code, out = await hodei_nomad(capsys, "status", "server")
    assert code == 2 and "cannot reach nomad" in out


def test_variables_file_and_failure_wording() -> None:
    text = variables_hcl(["image=acme/x:1", 'datacenters=["a", "b"]', "count=2", "flag=true"])
    assert text == 'image = "acme/x:1"\ndatacenters = ["a", "b"]\ncount = 2\nflag = true\n'
    [line] = describe_failures(
        {
            "agent": {
                "NodesEvaluated": 4,
                "NodesAvailable": {"dc1": 4},
                "ClassFiltered": {"gpu": 2},
                "DimensionExhausted": {"cpu": 2},
                "CoalescedFailures": 1,
            }
        }
    )
    assert line == (
        "task group 'agent' cannot be placed: 4 nodes evaluated; available per datacenter "
        "dc1: 4; filtered by class: gpu (2); exhausted: cpu (2); 1 more allocations failed "
        "the same way"
    )
