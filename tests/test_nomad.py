"""``hodei nomad plan|deploy|status`` against the in-process Nomad double."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import pytest
from conftest import ROOT
from nomad_double import Node, NomadDouble, running_nomad

from hodei.cli import build_parser
from hodei.plugin import nomad_deploy
from hodei.plugin.nomad_deploy import describe_failures, variables_hcl


@pytest.fixture
async def nomad_api(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[NomadDouble]:
    nodes = [Node("client-1"), Node("client-2"), Node("client-3", drivers=("raw_exec",))]
    async with running_nomad(nodes) as double:
        monkeypatch.setenv("NOMAD_ADDR", double.url)
        monkeypatch.setenv("NOMAD_TOKEN", "nomad-secret")
        monkeypatch.delenv("NOMAD_NAMESPACE", raising=False)
        monkeypatch.delenv("NOMAD_REGION", raising=False)
        yield double


async def hodei_nomad(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    args: argparse.Namespace = build_parser().parse_args(
        ["nomad", *argv, "--jobspecs", str(ROOT / "jobspecs"), "--wait-s", "2"]
    )
    code = await asyncio.to_thread(nomad_deploy.run, args)
    return code, capsys.readouterr().out


async def test_plan_parses_with_variables_and_shows_placements(
    nomad_api: NomadDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = await hodei_nomad(capsys, "plan", "--var", "image=acme/hodei:2", "--var", "count=3")
    assert code == 0, out
    assert "job 'hodei-server': added" in out and "group 'server': place 3" in out
    assert "job 'hodei-gateway': added" in out and "group 'gateway': place 3" in out
    # The agent is a system job: one per node with the docker driver.
    assert "job 'hodei-agent': added" in out and "group 'agent': place 2" in out
    # Each jobspec got only the variables it declares (Nomad refuses undeclared ones).
    redis_vars, server_vars = nomad_api.parsed_variables[0], nomad_api.parsed_variables[1]
    assert "count" not in redis_vars and 'image = "acme/hodei:2"' in server_vars
    assert "count = 3" in server_vars
    assert not nomad_api.jobs  # a plan registers nothing
    assert "nomad-secret" in nomad_api.tokens  # NOMAD_TOKEN is honoured


async def test_deploy_registers_and_status_reports_allocations(
    nomad_api: NomadDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = await hodei_nomad(capsys, "deploy", "--var", 'datacenters=["dc1"]')
    assert code == 0, out
    assert set(nomad_api.jobs) == {"hodei-redis", "hodei-server", "hodei-gateway", "hodei-agent"}
    assert nomad_api.jobs["hodei-agent"]["spec"]["Type"] == "system"
    task = nomad_api.jobs["hodei-agent"]["spec"]["TaskGroups"][0]["Tasks"][0]
    assert task["KillSignal"] == "SIGTERM" and task["Env"]["HODEI_DRAIN_GRACE_S"] == "30"
    assert "evaluation complete" in out
    code, out = await hodei_nomad(capsys, "status", "agent", "server")
    assert code == 0
    assert "job 'hodei-agent': running (system" in out
    assert out.count("client-1") == 2 and "client-3" not in out  # no docker driver there

    code, out = await hodei_nomad(capsys, "plan", "server", "--var", 'datacenters=["dc1"]')
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
    assert "filtered by constraint: missing drivers: docker (1)" in out

    code, out = await hodei_nomad(capsys, "plan", "server", "--var", 'datacenters=["eu-9"]')
    assert code == 1 and "0 nodes evaluated" in out


async def test_nomad_refusals_and_bad_variables_are_clear(
    nomad_api: NomadDouble, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    code, out = await hodei_nomad(capsys, "plan", "server", "--var", "colour=blue")
    assert code == 2 and "no selected jobspec declares colour" in out
    code, out = await hodei_nomad(capsys, "plan", "nonsense")
    assert code == 2 and "no jobspec" in out
    broken = ROOT / "jobspecs" / "hodei-server.nomad.hcl"
    spec = broken.read_text().replace("var.redis_url", "var.redis_address")
    path = tmp_path / "broken.nomad.hcl"  # type: ignore[operator]
    path.write_text(spec)
    code, out = await hodei_nomad(capsys, "plan", str(path))
    assert code == 2 and "nomad refused to parse broken.nomad.hcl" in out
    assert 'no variable named "redis_address"' in out


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
