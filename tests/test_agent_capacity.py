"""What an agent offers: under Nomad, what the operator reserved for it (its jobspec's
``resources``, which Nomad passes as NOMAD_CPU_LIMIT / NOMAD_MEMORY_LIMIT) minus the
agent's own share — never the host's totals, which Nomad does not give it."""

from __future__ import annotations

import psutil
import pytest
from conftest import AgentProcess, start_agent

from hodei.agent.resources import capacity
from hodei.agent.settings import AgentSettings
from hodei.errors import ConfigError
from hodei.plugin.server import ControlPlane

NOMAD = {"NOMAD_ALLOC_ID": "a1", "NOMAD_CPU_LIMIT": "4800", "NOMAD_MEMORY_LIMIT": "2304"}


def test_under_nomad_the_reservation_is_the_capacity() -> None:
    settings = AgentSettings(nomad_mhz_per_core=2400)
    offered = capacity(settings, NOMAD)
    # (4800 - 200) MHz at 2400 MHz a core = 1.916 cores; (2304 - 256) MB.
    assert (offered.cpu_millicores, offered.memory_mb) == (1916, 2048)
    assert offered.job_slots == 7  # 4 per core
    assert offered.memory_mb < psutil.virtual_memory().total // 2**20


def test_explicit_settings_win_and_outside_nomad_the_host_counts() -> None:
    settings = AgentSettings(nomad_mhz_per_core=2400, cpu_millicores=500, job_slots=2)
    offered = capacity(settings, NOMAD)
    assert (offered.cpu_millicores, offered.memory_mb, offered.job_slots) == (500, 2048, 2)
    host = capacity(AgentSettings(), {})
    assert host.cpu_millicores == (psutil.cpu_count() or 1) * 1000
    assert host.memory_mb == psutil.virtual_memory().total // 2**20


def test_a_reservation_too_small_for_the_agent_is_refused() -> None:
    small = NOMAD | {"NOMAD_MEMORY_LIMIT": "200"}
    with pytest.raises(ConfigError, match="NOMAD_MEMORY_LIMIT"):
        capacity(AgentSettings(nomad_mhz_per_core=2400), small)


async def test_agent_process_under_nomad_advertises_its_reservation(
    plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    env = NOMAD | {"HODEI_NOMAD_MHZ_PER_CORE": "2400"}
    await start_agent(plane, agents, "w1", "--runtimes", "process", env=env)
    worker = await plane.data.workers.get("w1")
    assert worker is not None
    assert (worker.capacity.cpu, worker.capacity.mem) == (1916, 2048), worker
