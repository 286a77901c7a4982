"""What the ``docker`` runtime asks the engine for: one hardened container per attempt.

Pure functions over the job and the options, so the request (limits, hardening, GPUs,
labels) can be checked without an engine.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from docker.types import DeviceRequest, HostConfig

from hodei.agent.identity import LABEL_MARK
from hodei.agent.runtime import function_env
from hodei.proto import hodei_pb2 as pb

LABEL_INVOCATION = "hodei.invocation"
LABEL_ATTEMPT = "hodei.attempt"
LABEL_WORKER = "hodei.worker"
LABEL_FUNCTION = "hodei.function"
LABEL_DEADLINE = "hodei.deadline_ms"
# The engine API version the SDK speaks; fixed so that building a client never needs the
# engine (with "auto" the SDK asks the engine at construction and fails while it is down).
API_VERSION = "1.41"


@dataclass(frozen=True, slots=True)
class DockerOptions:
    host: str = ""  # "" = DOCKER_HOST or the default socket
    user: str = "65534:65534"
    tmpfs_mb: int = 64
    pids_limit: int = 256
    ping_interval_s: float = 2.0
    pull_failure_ttl_s: float = 30.0


def host_config(job: pb.AssignJobRequest, options: DockerOptions) -> dict[str, Any]:
    """Limits from the function's resources and hardening by default."""
    r = job.resources
    config: dict[str, Any] = {
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,mode=1777,size={options.tmpfs_mb}m"},
        "network_mode": "bridge" if job.network else "none",
        "pids_limit": options.pids_limit,
    }
    if r.cpu_millicores > 0:
        config["nano_cpus"] = r.cpu_millicores * 1_000_000
    if r.memory_mb > 0:
        # Swap equal to memory: no swap, so an overrun is an OOM kill, not a slow crawl.
        config["mem_limit"] = f"{r.memory_mb}m"
        config["memswap_limit"] = f"{r.memory_mb}m"
    if r.gpus > 0:
        config["device_requests"] = [DeviceRequest(count=r.gpus, capabilities=[["gpu"]])]
    return config


def container_request(
    job: pb.AssignJobRequest,
    worker_id: str,
    mark: str,
    options: DockerOptions,
    deadline_ms: int,
    make_host_config: Callable[..., HostConfig],
) -> dict[str, Any]:
    """Keyword arguments of ``APIClient.create_container`` for one attempt."""
    return {
        "image": job.image,
        "command": list(job.command) or None,
        "environment": function_env(job),
        "user": options.user,
        "stdin_open": True,  # with attach: the container's stdin closes when ours does
        "labels": {
            LABEL_INVOCATION: job.invocation_id,
            LABEL_ATTEMPT: str(job.attempt),
            LABEL_WORKER: worker_id,
            LABEL_MARK: mark,
            LABEL_FUNCTION: job.function,
            LABEL_DEADLINE: str(deadline_ms),
        },
        "host_config": make_host_config(**host_config(job, options)),
    }


def job_of(labels: dict[str, str], image: str, now_ms: int) -> pb.AssignJobRequest:
    """The job a labelled container runs, rebuilt for an agent that lost track of it."""
    deadline = int(labels.get(LABEL_DEADLINE) or 0)
    return pb.AssignJobRequest(
        invocation_id=labels[LABEL_INVOCATION],
        attempt=int(labels.get(LABEL_ATTEMPT) or 1),
        function=labels.get(LABEL_FUNCTION, ""),
        runtime="docker",
        image=image,
        timeout_s=max(0.001, (deadline - now_ms) / 1000) if deadline else 0.0,
    )


class FrameReader:
    """Splits the engine's multiplexed attach stream: 8-byte headers (stream type, three
    zero bytes, big-endian length) each followed by that many bytes of stdout (1) or
    stderr (2)."""

    HEADER = struct.Struct(">BxxxI")

    def __init__(self, stdout: Callable[[bytes], None], stderr: Callable[[bytes], None]):
        self.sinks = {1: stdout, 2: stderr}
        self.buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self.buffer += data
        size = self.HEADER.size
        while len(self.buffer) >= size:
            kind, length = self.HEADER.unpack_from(self.buffer)
            if len(self.buffer) < size + length:
                return
            chunk = bytes(self.buffer[size : size + length])
            del self.buffer[: size + length]
            sink = self.sinks.get(kind)
            if sink is not None:
                sink(chunk)
