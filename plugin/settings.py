"""Typed settings of the control-plane process (``hodei server``)."""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass, field

from hodei.plugin.data.settings import DataSettings


@dataclass(frozen=True, slots=True)
class ServerSettings(DataSettings):
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 7070
    metrics_port: int = 9464
    server_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}")
    # Agents are who they say (plugin/agent_identity.py). Tokens: "token:worker-id"
    # entries, each token bound to one worker ("token:*" is a fleet token, an explicit
    # choice), inline or one a line in agent_tokens_file (kept out of the environment).
    agent_tokens: tuple[str, ...] = ()
    agent_tokens_file: str = ""
    # gRPC over TLS with client certificates (on when set; PEM): the CA that signs agents'
    # certificates (whose common name is their worker id), and this server's certificate
    # and key. The files are read again when they change.
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # With TLS, a plaintext port serving grpc.health.v1 alone: Consul's and Nomad's gRPC
    # checks cannot present a client certificate (-1 = none).
    grpc_health_port: int = -1
    # Operators (AssignJob, GetWorkerStatus of any worker): tokens, or certificates whose
    # common name is listed here.
    operator_tokens: tuple[str, ...] = ()
    operator_tokens_file: str = ""
    operator_names: tuple[str, ...] = ("hodei-operator",)
    # Accept unauthenticated agents on an address beyond loopback (refused otherwise).
    insecure: bool = False
    heartbeat_interval_s: float = 5.0
    missed_heartbeats: int = 3
    # A worker Unhealthy for this long is Failed and dropped from the fleet.
    failed_after_s: float = 300.0
    lease_ttl_s: float = 20.0
    leader_ttl_s: float = 6.0
    retry_base_s: float = 1.0
    retry_cap_s: float = 60.0
    scheduler_batch: int = 256
    max_candidates: int = 16
    max_scan: int = 512
    # Queue-depth and fleet gauges are refreshed this often.
    gauge_interval_s: float = 5.0
    log_level: str = "info"
    # "auto" (uvloop where it can be imported), "uvloop" or "asyncio" (hodei/loops.py).
    event_loop: str = "auto"
    # Consul (optional): on when an address is set here or in CONSUL_HTTP_ADDR. Then the
    # server registers hodei-server, places work only on passing agents, and elects its
    # leader with a Consul session and KV lock instead of the Redis lock.
    consul_addr: str = ""
    consul_token: str = ""  # "" = CONSUL_HTTP_TOKEN
    advertise_address: str = ""  # the address in Consul ("" = grpc_host)
    consul_check_interval_s: float = 10.0
    consul_deregister_after_s: float = 600.0
    consul_session_ttl_s: int = 15  # Consul accepts 10 s to 24 h
    consul_lock_delay_s: int = 15
    consul_leader_key: str = "hodei/leader"
    # Register hodei-server ourselves; off under Nomad, whose service block does it.
    consul_register: bool = True

    @property
    def unhealthy_after_s(self) -> float:
        return self.heartbeat_interval_s * self.missed_heartbeats
