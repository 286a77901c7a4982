"""gRPC over TLS with mutual authentication, from PEM files (``hodei certs``, Vault PKI,
any CA): the server's credentials require a client certificate signed by the CA, the
agent's present one. Files are read again when they change, so short-lived certificates
that a supervisor renews in place (Nomad's ``template`` with Vault's ``pkiCert``) are
picked up by the next connection without a restart."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from hodei.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: the CA that signs the other side's certificates, and our own
    certificate (with its chain) and private key."""

    ca: str
    cert: str
    key: str

    @classmethod
    def of(cls, ca: str, cert: str, key: str, who: str) -> TlsFiles | None:
        """The files when TLS is on (any of them given); all three are then required."""
        if not (ca or cert or key):
            return None
        missing = [
            name
            for name, value in (("tls_ca_file", ca), ("tls_cert_file", cert), ("tls_key_file", key))
            if not value
        ]
        if missing:
            raise ConfigError(
                f"{who}: TLS needs tls_ca_file, tls_cert_file and tls_key_file "
                f"(mutual authentication); missing {', '.join(missing)}"
            )
        files = cls(ca, cert, key)
        files.read()  # fail at start, not at the first connection
        return files

    def read(self) -> tuple[bytes, bytes, bytes]:
        """CA, certificate, key: PEM bytes."""
        return (
            read_pem(self.ca, "tls_ca_file"),
            read_pem(self.cert, "tls_cert_file"),
            read_pem(self.key, "tls_key_file"),
        )

    def stamp(self) -> tuple[float, ...]:
        """What changes when any of the files is replaced or rewritten."""
        stamps: list[float] = []
        for path in (self.ca, self.cert, self.key):
            try:
                st = os.stat(path)
            except OSError:
                return ()
            stamps += [st.st_mtime, float(st.st_ino), float(st.st_size)]
        return tuple(stamps)


def read_pem(path: str, setting: str) -> bytes:
    try:
        data = open(path, "rb").read()  # noqa: SIM115 - read at once, closed by refcount
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{setting}: {path} is not a PEM file")
    return data


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Server credentials that require and verify a client certificate, reloaded from the
    files when they change (checked before each new connection's handshake)."""

    def configuration() -> grpc.ServerCertificateConfiguration:
        ca, cert, key = files.read()
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    loaded = [files.stamp()]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        stamp = files.stamp()
        if not stamp or stamp == loaded[0]:
            return None
        try:
            fresh = configuration()
        except (ConfigError, ValueError) as exc:
            # Half-written files during a renewal: keep serving with what we have.
            log.warning("TLS files changed but cannot be loaded yet: %s", exc)
            return None
        loaded[0] = stamp
        log.info("TLS certificate files changed: loaded them again")
        return fresh

    # The stubs say the fetcher returns a configuration; gRPC documents None as "unchanged".
    return grpc.dynamic_ssl_server_credentials(
        configuration(),
        fetch,  # type: ignore[arg-type]
        require_client_authentication=True,
    )


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Channel credentials that verify the server against the CA and present our
    certificate (read now: a channel made later reads the files again)."""
    ca, cert, key = files.read()
    return grpc.ssl_channel_credentials(ca, key, cert)


def open_channel(
    address: str,
    files: TlsFiles | None,
    server_name: str = "",
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A channel to ``address``: over TLS when ``files`` are given (the server's certificate
    must name ``server_name``, else the address's host), else plaintext."""
    if files is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    extra = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.aio.secure_channel(address, channel_credentials(files), [*options, *extra])
