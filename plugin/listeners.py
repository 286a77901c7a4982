"""The server's gRPC ports: the WorkerService (over TLS with client certificates when
configured, else plaintext), and with TLS a plaintext port serving only grpc.health.v1
for Consul's and Nomad's checks, which cannot present a client certificate."""

from __future__ import annotations

import ipaddress
import logging

import grpc
from grpc_health.v1 import health_pb2_grpc

from hodei.errors import ConfigError
from hodei.plugin.agent_identity import AgentIdentities
from hodei.plugin.settings import ServerSettings
from hodei.tls import TlsFiles, server_credentials

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def tls_files(settings: ServerSettings) -> TlsFiles | None:
    s = settings
    return TlsFiles.of(s.tls_ca_file, s.tls_cert_file, s.tls_key_file, "server")


def check_exposure(
    settings: ServerSettings, identities: AgentIdentities, consul_checks: bool = False
) -> None:
    """Refuse to take unauthenticated agents beyond loopback unless told to, and TLS
    without a port Consul's check can reach when the server registers itself."""
    if identities.tls and consul_checks and settings.grpc_health_port < 0:
        raise ConfigError(
            "with TLS, Consul's gRPC check cannot present a client certificate: set "
            "grpc_health_port (a plaintext port serving grpc.health.v1 alone)"
        )
    if identities.authenticated or is_loopback(settings.grpc_host):
        return
    if not settings.insecure:
        raise ConfigError(
            f"grpc_host {settings.grpc_host} is reachable beyond this machine, and agents "
            "are not authenticated: set tls_* files or agent_tokens (token:worker-id), "
            "or --insecure to accept anyone as any worker"
        )
    log.warning("agents are not authenticated on %s (--insecure)", settings.grpc_host)


def add_worker_port(
    server: grpc.aio.Server, settings: ServerSettings, files: TlsFiles | None
) -> int:
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    if files is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, server_credentials(files))


def health_server(settings: ServerSettings, servicer: object) -> tuple[grpc.aio.Server, int]:
    """A plaintext server of grpc.health.v1 alone (the same servicer, so the same status)."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_health_port}")
    return server, port
