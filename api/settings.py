"""Typed settings of the HTTP gateway (``hodei gateway``)."""

from __future__ import annotations

from dataclasses import dataclass

from hodei.plugin.data.settings import DataSettings


@dataclass(frozen=True, slots=True)
class GatewaySettings(DataSettings):
    host: str = "127.0.0.1"
    port: int = 8080
    # Without API tokens anyone who reaches the gateway may do anything: it then refuses to
    # listen beyond loopback unless this says that is intended.
    insecure: bool = False
    # HTTPS (both set; PEM): the certificate (with its chain) and its key. Off: plain HTTP,
    # for a TLS-terminating proxy in front or loopback only.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # When set, /metrics needs `Authorization: Bearer <metrics_token>` (or a read token);
    # "" leaves it open to scrapers.
    metrics_token: str = ""
    max_payload_bytes: int = 6 * 1024 * 1024
    # A synchronous invoke waits this long unless ?wait= says otherwise (capped by max_wait_s).
    default_wait_s: float = 30.0
    max_wait_s: float = 900.0
    # "token:scope+scope" entries, comma-separated; or a file with one entry per line.
    api_tokens: tuple[str, ...] = ()
    api_tokens_file: str = ""
    # One-off jobs (POST /v1/jobs) run whatever their spec says, so they need the admin
    # scope; an invoke token may submit a docker job without network whose image matches
    # one of these shell patterns ("registry.example.com/jobs/*"; "*" spans "/" too).
    job_images: tuple[str, ...] = ()
    # ...taking this many seconds of a worker at most, over all its attempts: timeout_s x
    # (1 + max_retries). An admin's job is bound by the spec's limits alone.
    invoke_job_budget_s: float = 3600.0
    # Open server-sent event streams (/v1/events, logs?follow): in all, and per caller.
    max_streams: int = 1000
    max_streams_per_caller: int = 100
    callback_timeout_s: float = 10.0
    # Callbacks reach public addresses only; these networks (CIDR) and host names too
    # (`hodei dev` allows loopback). Metadata addresses (169.254.169.254...) never.
    callback_allow: tuple[str, ...] = ()
    callback_attempts: int = 8
    callback_base_s: float = 1.0
    callback_cap_s: float = 300.0
    log_level: str = "info"
    # "auto" (uvloop where it can be imported), "uvloop" or "asyncio" (hodei/loops.py).
    event_loop: str = "auto"
    # Consul (optional): registers hodei-gateway with an HTTP check on /readyz when an
    # address is set here or in CONSUL_HTTP_ADDR.
    consul_addr: str = ""
    consul_token: str = ""  # "" = CONSUL_HTTP_TOKEN
    advertise_address: str = ""  # the address in Consul ("" = host)
    consul_check_interval_s: float = 10.0
    consul_deregister_after_s: float = 600.0
    # Register hodei-gateway ourselves; off under Nomad, whose service block does it.
    consul_register: bool = True
