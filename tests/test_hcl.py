"""The Nomad jobspecs and the Terraform module parse (python-hcl2) and obey the rules Nomad
and Terraform would enforce — neither binary can run here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest

from hodei.agent.settings import DRAIN_MARGIN_S

ROOT = Path(__file__).resolve().parent.parent
JOBSPECS = sorted((ROOT / "jobspecs").glob("*.nomad.hcl"))
TERRAFORM = sorted((ROOT / "terraform").glob("*.tf"))
OPTIONS = hcl2.SerializationOptions(
    strip_string_quotes=True, with_comments=False, explicit_blocks=False
)
VAR_USE = re.compile(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)")
NOMAD_DEFAULT_MAX_KILL_TIMEOUT_S = 30.0


def load(path: Path) -> dict[str, Any]:
    with path.open() as f:
        parsed: dict[str, Any] = hcl2.load(f, serialization_options=OPTIONS)
    return parsed


def blocks(node: Any, kind: str) -> Iterator[dict[str, Any]]:
    """Every block of this kind anywhere below ``node`` (labels unwrapped)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == kind:
                for item in value if isinstance(value, list) else [value]:
                    yield from _unlabelled(item)
            yield from blocks(value, kind)
    elif isinstance(node, list):
        for item in node:
            yield from blocks(item, kind)


def _unlabelled(item: Any) -> Iterator[dict[str, Any]]:
    # A labelled block parses as {label: body}; an unlabelled one is the body itself.
    if isinstance(item, dict) and len(item) == 1:
        (only,) = item.values()
        if isinstance(only, dict):
            yield only
            return
    if isinstance(item, dict):
        yield item


def job_of(path: Path) -> dict[str, Any]:
    [job] = list(_unlabelled(load(path)["job"][0]))
    return job


def declared(parsed: dict[str, Any]) -> set[str]:
    return {name for item in parsed.get("variable", []) for name in item}


def duration_s(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", value)
    assert match, value
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def agent_kill_signal() -> str:
    """The signal Nomad sends the agent to stop it, as its jobspec declares."""
    [task] = list(blocks(job_of(ROOT / "jobspecs" / "hodei-agent.nomad.hcl"), "task"))
    signal: str = task["kill_signal"]
    return signal


def test_there_are_jobspecs_for_every_process() -> None:
    names = {p.name for p in JOBSPECS}
    assert names == {
        "hodei-agent.nomad.hcl",
        "hodei-agent-raw-exec.nomad.hcl",
        "hodei-server.nomad.hcl",
        "hodei-gateway.nomad.hcl",
        "redis.nomad.hcl",
    }


@pytest.mark.parametrize("path", JOBSPECS, ids=lambda p: p.name)
def test_jobspec_parses_and_uses_only_declared_variables(path: Path) -> None:
    parsed = load(path)
    assert len(parsed["job"]) == 1
    used = set(VAR_USE.findall(path.read_text()))
    assert used <= declared(parsed), f"undeclared: {used - declared(parsed)}"
    for name in ("datacenters",):
        assert name in declared(parsed)


@pytest.mark.parametrize("path", JOBSPECS, ids=lambda p: p.name)
def test_every_check_has_type_interval_and_timeout(path: Path) -> None:
    for check in blocks(job_of(path), "check"):
        assert check.get("type") in ("http", "grpc", "tcp", "script"), check
        assert duration_s(check["interval"]) > 0 and duration_s(check["timeout"]) > 0
        assert duration_s(check["timeout"]) < duration_s(check["interval"])


@pytest.mark.parametrize("path", [p for p in JOBSPECS if "agent" in p.name], ids=lambda p: p.name)
def test_agent_is_a_system_job_that_drains_within_its_kill_timeout(path: Path) -> None:
    job = job_of(path)
    assert job["type"] == "system"
    for forbidden in ("reschedule", "affinity", "spread"):
        assert not list(blocks(job, forbidden)), f"a system job has no {forbidden}"
    [task] = list(blocks(job, "task"))
    assert task["kill_signal"] == "SIGTERM"
    env = next(blocks(task, "env"))
    grace, handback = float(env["HODEI_DRAIN_GRACE_S"]), float(env["HODEI_DRAIN_HANDBACK_S"])
    kill_timeout = duration_s(task["kill_timeout"])
    # Nomad caps kill_timeout at the clients' max_kill_timeout, 30 s unless raised; the
    # agent must have drained, handed back and exited (margin) before SIGKILL.
    assert kill_timeout <= NOMAD_DEFAULT_MAX_KILL_TIMEOUT_S
    assert grace + handback + DRAIN_MARGIN_S <= kill_timeout
    assert env["NOMAD_NODE_NAME"] == "${node.unique.name}" and "NOMAD_NODE_CLASS" in env
    # Capacity is what Nomad reserves (the agent derives it), never a guess of the host's.
    assert not {"HODEI_CPU_MILLICORES", "HODEI_MEMORY_MB"} & set(env)
    resources = next(blocks(task, "resources"))
    assert (resources["cpu"], resources["memory"]) == ("${var.cpu}", "${var.memory}")
    assert env["HODEI_NOMAD_MHZ_PER_CORE"] == "${attr.cpu.frequency}"


def test_docker_agent_mounts_the_socket_only_where_clients_allow_it() -> None:
    job = job_of(ROOT / "jobspecs" / "hodei-agent.nomad.hcl")
    targets = {c["attribute"]: c.get("value") for c in blocks(job, "constraint")}
    assert targets["${attr.driver.docker.volumes.enabled}"] == "true"
    [task] = list(blocks(job, "task"))
    config = next(blocks(task, "config"))
    assert "/var/run/docker.sock:/var/run/docker.sock" in config["volumes"]
    assert task["user"] == "root" and config["network_mode"] == "host"
    state_dir = next(blocks(task, "env"))["HODEI_STATE_DIR"]
    assert any(state_dir.startswith(v.split(":")[1]) for v in config["volumes"])


@pytest.mark.parametrize("name", ["hodei-server", "hodei-gateway"])
def test_server_and_gateway_reach_consul_and_redis_as_a_client_node_allows(name: str) -> None:
    job = job_of(ROOT / "jobspecs" / f"{name}.nomad.hcl")
    [network] = list(blocks(job, "network"))
    assert network["mode"] == "host"
    [task] = list(blocks(job, "task"))
    assert next(blocks(task, "config"))["network_mode"] == "host"
    parsed = load(ROOT / "jobspecs" / f"{name}.nomad.hcl")
    consul = {n: b for v in parsed["variable"] for n, b in v.items()}.get("consul_addr")
    if consul:  # the node's Consul agent listens on 127.0.0.1 by default (client_addr)
        assert consul["default"] == "http://127.0.0.1:8500"
    # Redis found through Consul by the template, its password from a Nomad Variable.
    [template] = [t for t in blocks(task, "template") if t.get("env")]
    data = template["data"]
    assert 'service "${var.redis_service}"' in data and ".redis_password" in data
    assert f'nomadVar "nomad/jobs/{name}"' in data
    assert "HODEI_REDIS_URL=redis://${var.redis_user}:{{ $password }}@" in data
    assert "HODEI_REDIS_URL" not in next(blocks(task, "env"))


def test_nothing_relies_on_consul_dns() -> None:
    for path in [*JOBSPECS, *TERRAFORM]:
        assert ".service.consul" not in path.read_text(), path.name


@pytest.mark.parametrize("path", JOBSPECS, ids=lambda p: p.name)
def test_templates_are_balanced(path: Path) -> None:
    """consul-template cannot run here: at least every block opened is closed."""
    for template in blocks(job_of(path), "template"):
        data = template["data"]
        opened = len(re.findall(r"\{\{-?\s*(with|range|if)\b", data))
        closed = len(re.findall(r"\{\{-?\s*end\s*-?\}\}", data))
        assert opened == closed and data.count("{{") == data.count("}}"), data


def test_redis_needs_a_password() -> None:
    job = job_of(ROOT / "jobspecs" / "redis.nomad.hcl")
    [task] = list(blocks(job, "task"))
    args = next(blocks(task, "config"))["args"]
    acl = args[args.index("--aclfile") + 1]
    [template] = list(blocks(task, "template"))
    assert acl == "/" + template["destination"]
    assert "user default off" in template["data"]
    assert '{{ with nomadVar "nomad/jobs/hodei-redis" }}' in template["data"]
    assert ">{{ .password }}" in template["data"]


def test_agent_variants_differ_only_in_how_the_agent_starts() -> None:
    docker = next(blocks(job_of(ROOT / "jobspecs" / "hodei-agent.nomad.hcl"), "task"))
    raw = next(blocks(job_of(ROOT / "jobspecs" / "hodei-agent-raw-exec.nomad.hcl"), "task"))
    assert (docker["driver"], raw["driver"]) == ("docker", "raw_exec")
    assert next(blocks(docker, "env")) == next(blocks(raw, "env"))


@pytest.mark.parametrize("name", ["hodei-server", "hodei-gateway"])
def test_services_have_checks_and_rolling_updates(name: str) -> None:
    job = job_of(ROOT / "jobspecs" / f"{name}.nomad.hcl")
    assert job["type"] == "service"
    [update] = list(blocks(job, "update"))
    assert update["max_parallel"] == 1 and update["health_check"] == "checks"
    assert update["auto_revert"] is True
    services = {s["name"]: s for s in blocks(job, "service")}
    assert name in services and list(blocks(services[name], "check"))
    [task] = list(blocks(job, "task"))
    # Nomad registers the service: the process must not register it a second time.
    assert next(blocks(task, "env"))["HODEI_CONSUL_REGISTER"] == "false"


def test_gateway_check_is_readyz_and_server_check_is_grpc() -> None:
    gateway = job_of(ROOT / "jobspecs" / "hodei-gateway.nomad.hcl")
    [check] = list(blocks(next(s for s in blocks(gateway, "service")), "check"))
    assert (check["type"], check["path"]) == ("http", "/readyz")
    server = job_of(ROOT / "jobspecs" / "hodei-server.nomad.hcl")
    grpc_check = next(c for c in blocks(server, "check") if c["type"] == "grpc")
    assert grpc_check["grpc_service"] == "hodei.v1.WorkerService"


def test_redis_keeps_an_append_only_file_on_a_volume() -> None:
    job = job_of(ROOT / "jobspecs" / "redis.nomad.hcl")
    [volume] = list(blocks(job, "volume"))
    assert volume["type"] == "host"
    [task] = list(blocks(job, "task"))
    args = next(blocks(task, "config"))["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert next(blocks(task, "volume_mount"))["destination"] == "/data"


def test_terraform_parses_and_pins_its_providers() -> None:
    parsed = {p.name: load(p) for p in TERRAFORM}
    assert set(parsed) >= {"versions.tf", "variables.tf", "main.tf", "acl.tf", "outputs.tf"}
    [terraform] = parsed["versions.tf"]["terraform"]
    [providers] = terraform["required_providers"]
    for name in ("nomad", "consul", "random"):
        assert providers[name]["source"] == f"hashicorp/{name}"
        assert re.fullmatch(r"\d+\.\d+\.\d+", providers[name]["version"]), "pin exact versions"


def test_terraform_uses_only_declared_variables_and_existing_files() -> None:
    declared_vars = declared(load(ROOT / "terraform" / "variables.tf"))
    text = "\n".join(p.read_text() for p in TERRAFORM)
    used = set(VAR_USE.findall(text))
    assert used <= declared_vars, f"undeclared: {used - declared_vars}"
    referenced = re.findall(r'file\("\$\{local\.jobspecs\}/([^"]+)"\)', text)
    assert referenced, "the module submits the jobspecs"
    for name in referenced:
        assert (ROOT / "jobspecs" / name).is_file(), name


def test_terraform_feeds_each_jobspec_only_variables_it_declares() -> None:
    main = load(ROOT / "terraform" / "main.tf")
    for resource in main["resource"]:
        for kind, named in resource.items():
            if kind != "nomad_job":
                continue
            for name, body in named.items():
                path = re.search(r"/([^/]+\.nomad\.hcl)", body["jobspec"])
                assert path, name
                spec_vars = declared(load(ROOT / "jobspecs" / path.group(1)))
                [hcl2_block] = body["hcl2"]
                passed = set(hcl2_block["vars"])
                assert passed <= spec_vars, f"{name}: {passed - spec_vars} not declared"


def test_terraform_leaves_nothing_open() -> None:
    """Redis gets a password and the gateway API tokens even when the operator gives
    neither (issue 12 section 6): generated, stored in the jobs' Nomad Variables."""
    parsed = load(ROOT / "terraform" / "variables.tf")
    variables = {n: b for v in parsed["variable"] for n, b in v.items()}
    assert "default" not in variables["image"]
    main = (ROOT / "terraform" / "main.tf").read_text()
    assert 'var.api_tokens != "" ? var.api_tokens : "${random_password.api_admin.result}' in main
    resources = {
        name: body
        for resource in load(ROOT / "terraform" / "main.tf")["resource"]
        for kind, named in resource.items()
        if kind == "nomad_variable"
        for name, body in named.items()
    }
    paths = {name: body["path"] for name, body in resources.items()}
    assert paths["redis"] == "nomad/jobs/hodei-redis"
    for reader in ("server", "gateway"):
        assert resources[reader]["items"]["redis_password"] == "${local.redis_password}"
    assert resources["gateway"]["items"]["api_tokens"] == "${local.api_tokens}"
    # Every item a jobspec template reads from its Nomad Variable is stored there.
    for name, body in resources.items():
        job = body["path"].removeprefix("nomad/jobs/")
        spec = (
            ROOT / "jobspecs" / ("redis.nomad.hcl" if job == "hodei-redis" else f"{job}.nomad.hcl")
        )
        read = set(re.findall(r"\{\{ \.(\w+) \}\}", spec.read_text())) | set(
            re.findall(r":= \.(\w+) ", spec.read_text())
        )
        assert read <= set(body["items"]), (name, read - set(body["items"]))


def test_acl_policies_are_least_privilege() -> None:
    acl = load(ROOT / "terraform" / "acl.tf")
    policies = {
        name: body["rules"]
        for resource in acl["resource"]
        for kind, named in resource.items()
        if kind == "consul_acl_policy"
        for name, body in named.items()
    }
    assert set(policies) == {"agent", "server", "gateway"}
    assert 'key "hodei/leader"' in policies["server"]
    assert "key" not in policies["agent"] and "session" not in policies["agent"]
    assert "session" not in policies["gateway"]
    for rules in policies.values():
        assert 'policy = "write"' in rules
        assert "acl =" not in rules and 'operator = "write"' not in rules
