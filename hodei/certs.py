"""``hodei certs``: a development CA and the certificates of gRPC's mutual TLS.

``ca`` makes the CA; ``server`` a server certificate for the names agents dial; ``agent
WORKER_ID`` a client certificate whose common name is the worker id; ``operator [NAME]``
a client certificate for the operator RPCs (its name listed in the server's
``operator_names``). PEM files, EC P-256 keys readable by their owner alone. In production
the same files can come from Vault's PKI or any CA: only the common names matter.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

from hodei.errors import ConfigError

CA_DAYS = 3650
LEAF_DAYS = 365
DEFAULT_DIR = "hodei-tls"
OPERATOR = "hodei-operator"


def add_command(sub: Any) -> None:
    parser = sub.add_parser(
        "certs",
        help="make a development CA and the certificates of gRPC mutual TLS",
        description=__doc__,
    )
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    ca = kinds.add_parser("ca", help="a CA that signs servers' and agents' certificates")
    ca.add_argument("--name", default="hodei-dev-ca", help="the CA's common name")
    server = kinds.add_parser("server", help="a server certificate (TLS server auth)")
    server.add_argument(
        "names",
        nargs="*",
        help="DNS names and IP addresses agents dial (default: localhost, 127.0.0.1, this host)",
    )
    agent = kinds.add_parser("agent", help="an agent's client certificate: CN = its worker id")
    agent.add_argument("worker_id", help="the worker id the certificate proves")
    operator = kinds.add_parser("operator", help="an operator's client certificate")
    operator.add_argument("name", nargs="?", default=OPERATOR, help=f"its CN (default {OPERATOR})")
    for kind in (ca, server, agent, operator):
        kind.add_argument("--dir", default=DEFAULT_DIR, help="folder of the CA and the files")
        kind.add_argument("--days", type=int, default=0, help="validity (default: CA 10 y, 1 y)")
        kind.add_argument("--force", action="store_true", help="replace files that exist")


def run(args: Any) -> int:
    folder = Path(args.dir)
    try:
        if args.kind == "ca":
            cert, key = make_ca(folder, args.name, args.days or CA_DAYS, args.force)
            print(f"CA: {cert} (give it to servers and agents)")
            print(f"    {key} (its key: keep it secret, it signs every identity)")
            return 0
        if args.kind == "server":
            names = args.names or ["localhost", "127.0.0.1", socket.gethostname()]
            cert, key = issue(folder, "server", names[0], names, args.days, args.force)
            print(f"server certificate for {', '.join(names)}:")
            print(f"  hodei server {_flags(folder, cert, key)}")
            return 0
        if args.kind == "agent":
            cert, key = issue(folder, "agent", args.worker_id, [], args.days, args.force)
            print(f"agent certificate of worker {args.worker_id}:")
            print(f"  hodei agent --worker-id {args.worker_id} {_flags(folder, cert, key)}")
            return 0
        cert, key = issue(folder, "operator", args.name, [], args.days, args.force)
        print(f"operator certificate {args.name} (the server's operator_names must list it):")
        print(f"  {_flags(folder, cert, key)}")
        return 0
    except ConfigError as exc:
        print(f"hodei certs: {exc}")
        return 2


def _flags(folder: Path, cert: Path, key: Path) -> str:
    return f"--tls-ca-file {folder / 'ca.pem'} --tls-cert-file {cert} --tls-key-file {key}"


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    if path.exists() and not force:
        raise ConfigError(f"{path} exists (--force replaces it)")
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    temporary.replace(path)


def _pem_key(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    data: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return data


def make_ca(folder: Path, name: str, days: int = CA_DAYS, force: bool = False) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "ca.pem", folder / "ca-key.pem"
    _write(key_path, _pem_key(key), 0o600, force)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, force)
    return cert_path, key_path


def issue(
    folder: Path, kind: str, common_name: str, names: list[str], days: int = 0, force: bool = False
) -> tuple[Path, Path]:
    """A certificate signed by the CA in ``folder``: ``server`` (server auth, ``names`` as
    subject alternative names) or ``agent``/``operator`` (client auth)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not common_name or "/" in common_name or common_name.startswith("."):
        raise ConfigError(f"{common_name!r} cannot name a certificate (nor its file)")
    try:
        ca_cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((folder / "ca-key.pem").read_bytes(), None)
    except OSError as exc:
        raise ConfigError(
            f"no CA in {folder} ({exc.strerror}): make one with `hodei certs ca --dir {folder}`"
        ) from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{folder / 'ca-key.pem'}: not an EC key made by `hodei certs ca`")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if kind == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days or LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    stem = kind if kind == "server" else f"{kind}-{common_name}"
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}-key.pem"
    _write(key_path, _pem_key(key), 0o600, force)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, force)
    return cert_path, key_path


def _general_name(name: str) -> Any:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_usage(signs: bool) -> Any:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=signs,
        crl_sign=signs,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
