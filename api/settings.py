"""Typed settings of the HTTP gateway (``hodei gateway``)."""

from __future__ import annotations

from dataclasses import dataclass

from hodei.config import EnvSettings


@dataclass(frozen=True, slots=True)
class GatewaySettings(EnvSettings):
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "hodei"
    host: str = "127.0.0.1"
    port: int = 8080
    max_payload_bytes: int = 6 * 1024 * 1024
    # A synchronous invoke waits this long unless ?wait= says otherwise (capped by max_wait_s).
    default_wait_s: float = 30.0
    max_wait_s: float = 900.0
    # "token:scope+scope" entries, comma-separated; or a file with one entry per line.
    api_tokens: tuple[str, ...] = ()
    api_tokens_file: str = ""
    # Must agree with the servers' (one Redis, one queue).
    max_queue: int = 100_000
    ageing_s: float = 60.0
    events_maxlen: int = 100_000
    retention_s: int = 7 * 24 * 3600
    callback_timeout_s: float = 10.0
    callback_attempts: int = 8
    callback_base_s: float = 1.0
    callback_cap_s: float = 300.0
    log_level: str = "info"
    # Consul (optional): registers hodei-gateway with an HTTP check on /readyz when an
    # address is set here or in CONSUL_HTTP_ADDR.
    consul_addr: str = ""
    consul_token: str = ""  # "" = CONSUL_HTTP_TOKEN
    advertise_address: str = ""  # the address in Consul ("" = host)
    consul_check_interval_s: float = 10.0
    consul_deregister_after_s: float = 600.0
    # Register hodei-gateway ourselves; off under Nomad, whose service block does it.
    consul_register: bool = True
