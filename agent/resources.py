"""The seed's Resource Monitor: what this node offers and how busy it is."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping

import psutil

from hodei.agent.settings import AgentSettings
from hodei.errors import ConfigError
from hodei.proto import hodei_pb2 as pb


def capacity(settings: AgentSettings, env: Mapping[str, str] | None = None) -> pb.Resources:
    """Capacity from the settings, else (under Nomad) the task's reservation, else the
    machine; job slots default to 4 per core offered."""
    env = os.environ if env is None else env
    reserved = nomad_reservation(settings, env)
    cpu = settings.cpu_millicores or (reserved[0] if reserved else (psutil.cpu_count() or 1) * 1000)
    memory = settings.memory_mb or (
        reserved[1] if reserved else psutil.virtual_memory().total // (1024 * 1024)
    )
    return pb.Resources(
        cpu_millicores=cpu,
        memory_mb=memory,
        gpus=settings.gpus or gpu_count(),
        job_slots=settings.job_slots or max(1, cpu * 4 // 1000),
    )


def nomad_reservation(settings: AgentSettings, env: Mapping[str, str]) -> tuple[int, int] | None:
    """(millicores, MB) Nomad reserved for this task, less the agent's own share; None
    outside Nomad. Nomad does not account the host's totals to the agent, so offering them
    would let functions use what Nomad gives to other jobs."""
    if not env.get("NOMAD_ALLOC_ID") or not env.get("NOMAD_MEMORY_LIMIT"):
        return None
    try:
        cpu_mhz = float(env.get("NOMAD_CPU_LIMIT") or 0)
        memory_mb = int(env["NOMAD_MEMORY_LIMIT"])
    except ValueError:
        raise ConfigError("NOMAD_CPU_LIMIT / NOMAD_MEMORY_LIMIT are not numbers") from None
    per_core = settings.nomad_mhz_per_core or _mhz_per_core()
    cpu = int((cpu_mhz - settings.nomad_agent_cpu_mhz) * 1000 / per_core)
    memory = memory_mb - settings.nomad_agent_memory_mb
    if memory <= 0 or cpu <= 0:
        raise ConfigError(
            f"the Nomad reservation (NOMAD_CPU_LIMIT {cpu_mhz:g} MHz, NOMAD_MEMORY_LIMIT "
            f"{memory_mb} MB) leaves nothing for functions after the agent's own "
            f"{settings.nomad_agent_cpu_mhz} MHz / {settings.nomad_agent_memory_mb} MB"
        )
    return cpu, memory


def _mhz_per_core() -> float:
    frequency = psutil.cpu_freq()
    return float(frequency.max or frequency.current) if frequency else 1000.0


def gpu_count(devices: str = "/dev") -> int:
    """NVIDIA GPUs on this node, one /dev/nvidiaN device node each."""
    return sum(1 for path in glob.glob(f"{devices}/nvidia*") if re.search(r"nvidia\d+$", path))


class ResourceMonitor:
    def __init__(self) -> None:
        psutil.cpu_percent(interval=None)  # primes the counter; the first reading is 0

    def sample(self) -> tuple[float, float]:
        """(cpu %, memory %) of the node since the previous sample."""
        return psutil.cpu_percent(interval=None), psutil.virtual_memory().percent
