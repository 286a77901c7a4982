"""What an agent runs functions with, built from its settings: the runtimes it offers
(process through its sandbox, docker) and the launchers of their lambda instances."""

from __future__ import annotations

import logging

from hodei.agent.docker_instances import DockerLauncher
from hodei.agent.docker_runtime import DockerRuntime
from hodei.agent.docker_spec import DockerOptions
from hodei.agent.instance import Launcher
from hodei.agent.process_instances import ProcessLauncher
from hodei.agent.process_runtime import ProcessRuntime
from hodei.agent.resources import capacity
from hodei.agent.runtime import Runtime
from hodei.agent.sandbox_setup import agent_sandbox
from hodei.agent.settings import AgentSettings
from hodei.errors import ConfigError

log = logging.getLogger(__name__)


def build_runtimes(settings: AgentSettings, mark: str) -> dict[str, Runtime]:
    runtimes: dict[str, Runtime] = {}
    for name in settings.runtimes:
        if name == "process":
            sandbox = agent_sandbox(settings, mark, capacity(settings).job_slots)
            if sandbox.sandboxed:
                log.info("process runtime: %s", sandbox.description)
            else:
                log.warning("process runtime: %s", sandbox.description)
            if sandbox.reaped:
                log.warning("killed %d function processes left by an earlier run", sandbox.reaped)
            runtimes[name] = ProcessRuntime(settings.output_cap_bytes, mark, sandbox)
        elif name == "docker":
            options = DockerOptions(
                host=settings.docker_host,
                user=settings.docker_user,
                tmpfs_mb=settings.docker_tmpfs_mb,
                pids_limit=settings.docker_pids_limit,
                ping_interval_s=settings.docker_ping_interval_s,
                pull_failure_ttl_s=settings.docker_pull_failure_ttl_s,
            )
            runtimes[name] = DockerRuntime(
                settings.worker_id, mark, settings.output_cap_bytes, options
            )
        else:
            raise ConfigError(f"unknown runtime {name!r} (process, docker)")
    return runtimes


def build_launchers(
    settings: AgentSettings, mark: str, runtimes: dict[str, Runtime]
) -> dict[str, Launcher]:
    """Lambda instances for each runtime the agent runs (docker's share its engine)."""
    launchers: dict[str, Launcher] = {}
    process = runtimes.get("process")
    if isinstance(process, ProcessRuntime):
        launchers["process"] = ProcessLauncher(
            process.sandbox, mark, settings.output_cap_bytes, settings.lambda_region
        )
    docker = runtimes.get("docker")
    if isinstance(docker, DockerRuntime):
        launchers["docker"] = DockerLauncher(
            docker, settings.output_cap_bytes, settings.lambda_region
        )
    return launchers
