"""Typed settings of the worker agent (``hodei agent``)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from hodei.config import EnvSettings

# What a sandboxed function must not even see: container engines' sockets, the agents' locks.
DEFAULT_HIDDEN = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/run/hodei",
)


# The defaults of AgentSettings.drain_grace_s and drain_handback_s.
DRAIN_GRACE_S = 30.0
DRAIN_HANDBACK_S = 8.0


@dataclass(frozen=True, slots=True)
class AgentSettings(EnvSettings):
    # One or several comma-separated addresses; "" = find them in Consul when Consul is
    # configured, else 127.0.0.1:7070.
    server: str = ""
    # The gRPC token. Prefer token_file: a file keeps it out of the agent's environment
    # (a HODEI_TOKEN variable is read, then removed from it; see agent/secrets handling).
    token: str = ""
    token_file: str = ""
    # gRPC over TLS (on when set; PEM): the CA that signed the server's certificate, and
    # this agent's client certificate (its common name is the worker id) and key.
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # The name the server's certificate must carry ("" = the host of the server address).
    tls_server_name: str = ""
    worker_id: str = field(default_factory=socket.gethostname)
    # Where the agent keeps its mark (what tells its own leftover processes and containers
    # from other agents' on the host); "" = $XDG_STATE_HOME/hodei or ~/.local/state/hodei.
    state_dir: str = ""
    # 0 = detect: under Nomad, what the task reserved (NOMAD_CPU_LIMIT, NOMAD_MEMORY_LIMIT)
    # minus the agent's own share; elsewhere the machine (psutil).
    cpu_millicores: int = 0
    memory_mb: int = 0
    gpus: int = 0
    job_slots: int = 0
    labels: tuple[str, ...] = ()
    # docker is advertised only while its engine answers. `process` runs whatever command
    # a function spec names on this machine: offered only when listed here.
    runtimes: tuple[str, ...] = ("docker",)
    # The process runtime's sandbox: "on" (needs root: each function under a uid of its
    # own, its own cgroup, mount and network namespaces; the agent refuses to start without
    # them) or "off" (functions run as the agent's user with its network and files: an
    # explicit choice for a trusted single-user machine).
    process_sandbox: str = "on"
    # Function uids: the agent claims process_uid_count free uids from process_uid_base on
    # (0 = two per job slot: idle lambda instances hold one each too; a job finding none
    # free stops the least recently used idle instance), each held by a lock under
    # /run/hodei/uids.
    process_uid_base: int = 2_147_000_000
    process_uid_count: int = 0
    # Let functions run as root (a uid range with 0, or an unsandboxed agent run by root).
    process_allow_root: bool = False
    process_pids_max: int = 256  # processes and threads per function
    process_tmpfs_mb: int = 64  # each private folder's size
    process_private_dirs: tuple[str, ...] = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
    process_hidden_paths: tuple[str, ...] = DEFAULT_HIDDEN
    process_cgroup_root: str = ""  # "" = <cgroup v2 mount>/hodei; "off" = rlimits only
    # Folders functions may read although an ancestor folder is closed to their uid (the
    # agent's own Python and Hodei always are).
    process_exposed_paths: tuple[str, ...] = ()
    docker_host: str = ""  # "" = DOCKER_HOST or the engine's default socket
    docker_user: str = "65534:65534"
    docker_tmpfs_mb: int = 64
    docker_pids_limit: int = 256
    docker_ping_interval_s: float = 2.0
    docker_pull_failure_ttl_s: float = 30.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9465
    # grpc.health.v1 for Nomad/Consul checks: SERVING while connected and taking work.
    health_port: int = 7071
    heartbeat_interval_s: float = 5.0
    # On SIGTERM: running jobs get drain_grace_s to finish; then what still runs is handed
    # back (its processes and containers stopped), results acknowledged and Consul told,
    # all within drain_handback_s. The process exits within grace + hand-back (+ a margin):
    # a supervisor's kill timeout (Nomad's kill_timeout, at most the clients'
    # max_kill_timeout, 30 s by default) must be at least that.
    drain_grace_s: float = DRAIN_GRACE_S
    drain_handback_s: float = DRAIN_HANDBACK_S
    output_cap_bytes: int = 6 * 1024 * 1024
    # Lambda instances: AWS_REGION they see (unless their spec sets one), and how long an
    # idle instance lives when its spec's warm.idle_s does not say.
    lambda_region: str = "hodei"
    lambda_idle_s: float = 600.0
    log_batch_lines: int = 200
    log_flush_s: float = 0.05
    reconnect_base_s: float = 0.2
    reconnect_cap_s: float = 10.0
    # A result the server has not acknowledged is sent again this often.
    result_resend_s: float = 5.0
    log_level: str = "info"
    # "auto" (uvloop where it can be imported), "uvloop" or "asyncio" (hodei/loops.py).
    event_loop: str = "auto"
    # Consul (optional): on when an address is set here or in CONSUL_HTTP_ADDR.
    consul_addr: str = ""
    consul_token: str = ""  # "" = CONSUL_HTTP_TOKEN
    consul_ttl_heartbeats: float = 3.0  # the TTL check's TTL, in heartbeat intervals
    # Consul removes a service critical this long (at least a minute); the agent registers
    # again when it notices, but a short value drops agents from the UI on every hiccup.
    consul_deregister_after_s: float = 600.0
    advertise_address: str = ""  # the service address in Consul ("" = the node's)
    # Advertise the Nomad node's identity (datacenter, node, class, meta) as labels.
    nomad_identity: bool = True
    # Under Nomad: MHz per core (the jobspec passes ${attr.cpu.frequency}; 0 = psutil's),
    # and what of the task's reservation the agent keeps for itself.
    nomad_mhz_per_core: float = 0.0
    nomad_agent_cpu_mhz: int = 200
    nomad_agent_memory_mb: int = 256

    @property
    def label_map(self) -> dict[str, str]:
        """The worker's labels: its Nomad identity, then the explicit ``labels`` (which win)."""
        labels = nomad_labels(os.environ) if self.nomad_identity else {}
        pairs = (item.split("=", 1) for item in self.labels if "=" in item)
        labels.update({k.strip(): v.strip() for k, v in pairs})
        return labels


# Exit, connection close and deregistration after the drain: what a kill timeout must leave.
DRAIN_MARGIN_S = 2.0

# What a Nomad task sees of its node: NOMAD_DC and NOMAD_REGION are set by Nomad; the
# jobspec passes the node's name, class and chosen meta keys (``${node.unique.name}``...).
NOMAD_VARIABLES = {
    "NOMAD_DC": "nomad.datacenter",
    "NOMAD_REGION": "nomad.region",
    "NOMAD_NODE_NAME": "nomad.node",
    "NOMAD_NODE_CLASS": "nomad.class",
}
NODE_META_PREFIX = "NOMAD_NODE_META_"


def nomad_labels(env: Mapping[str, str]) -> dict[str, str]:
    labels = {label: env[name] for name, label in NOMAD_VARIABLES.items() if env.get(name)}
    for name, value in env.items():
        if name.startswith(NODE_META_PREFIX) and value:
            labels[f"meta.{name[len(NODE_META_PREFIX) :].lower()}"] = value
    return labels
