"""The seed's Resource Monitor: what this node offers and how busy it is."""

from __future__ import annotations

import glob
import re

import psutil

from hodei.agent.settings import AgentSettings
from hodei.proto import hodei_pb2 as pb


def capacity(settings: AgentSettings) -> pb.Resources:
    """Capacity from the machine, each dimension overridable by a setting."""
    cpus = psutil.cpu_count() or 1
    return pb.Resources(
        cpu_millicores=settings.cpu_millicores or cpus * 1000,
        memory_mb=settings.memory_mb or psutil.virtual_memory().total // (1024 * 1024),
        gpus=settings.gpus or gpu_count(),
        job_slots=settings.job_slots or cpus * 4,
    )


def gpu_count(devices: str = "/dev") -> int:
    """NVIDIA GPUs on this node, one /dev/nvidiaN device node each."""
    return sum(1 for path in glob.glob(f"{devices}/nvidia*") if re.search(r"nvidia\d+$", path))


class ResourceMonitor:
    def __init__(self) -> None:
        psutil.cpu_percent(interval=None)  # primes the counter; the first reading is 0

    def sample(self) -> tuple[float, float]:
        """(cpu %, memory %) of the node since the previous sample."""
        return psutil.cpu_percent(interval=None), psutil.virtual_memory().percent
