"""Where callbacks may connect: public addresses, and what the operator allows besides.

A callback URL is the caller's choice, so a delivery must never reach inside the network:
loopback, private (RFC 1918, ULA), link-local, multicast, unspecified and the cloud
metadata addresses are refused. The check runs in the connector's socket factory, on each
address a connection is about to be made to, after DNS: a name that resolves to a public
address first and to a private one for the connection (DNS rebinding) is refused too,
and an address given literally in the URL is checked the same way.
"""

from __future__ import annotations

import contextvars
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

import aiohttp
import yarl
from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import AbstractResolver

from hodei.errors import CallbackRefused, ConfigError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Never reachable, whatever the allow-list says: the instance credentials live there.
METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# IPv6 forms that carry an IPv4 address in their last 32 bits: IPv4-compatible
# (deprecated) and IPv4-translated (SIIT).
EMBEDDED_IPV4 = (ipaddress.IPv6Network("::/96"), ipaddress.IPv6Network("::ffff:0:0:0/96"))
# Networks that are not public, which Python's ipaddress calls global before 3.12.4 (and
# some of them private after): NAT64 for local use (RFC 8215), the deprecated site-local.
NOT_PUBLIC = (ipaddress.IPv6Network("64:ff9b:1::/48"), ipaddress.IPv6Network("fec0::/10"))
HOST_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


@dataclass
class Delivery:
    """One delivery's connection attempts, kept where its connector's socket factory can
    see them: whether its URL's host is allow-listed by name, and what was refused."""

    host_allowed: bool = False
    tried: int = 0
    refused: list[str] = field(default_factory=list)

    @property
    def only_refused(self) -> bool:
        """Every address tried was refused: retrying cannot help."""
        return bool(self.refused) and len(self.refused) == self.tried


DELIVERY: contextvars.ContextVar[Delivery | None] = contextvars.ContextVar(
    "callback_delivery", default=None
)


def _destinations(address: Address) -> tuple[Address, ...]:
    """The address, and the IPv4 one it carries (mapped, 6to4, NAT64): where it leads."""
    if not isinstance(address, ipaddress.IPv6Address):
        return (address,)
    if address.ipv4_mapped is not None:
        return (address.ipv4_mapped,)
    if address.sixtofour is not None:
        return (address, address.sixtofour)
    if address in NAT64 or any(address in net for net in EMBEDDED_IPV4):
        return (address, ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return (address,)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


def kind_of(address: Address) -> str | None:
    """What makes an address one callbacks may not reach, None for a public one."""
    for candidate in _destinations(address):
        kind = _kind(candidate)
        if kind is not None:
            return kind
    return None


def _kind(candidate: Address) -> str | None:
    """``kind_of`` one address, without the IPv4 address it may carry."""
    if candidate in METADATA:
        return "a cloud metadata address"
    if candidate.is_unspecified:
        return "the unspecified address"
    if candidate.is_loopback:
        return "a loopback address"
    if candidate.is_link_local:
        return "a link-local address"
    if candidate.is_multicast:
        return "a multicast address"
    if any(candidate in net for net in NOT_PUBLIC):  # before is_private: see NOT_PUBLIC
        return "not a public address"
    if candidate.is_private:
        return "a private address"
    if not candidate.is_global:
        return "not a public address"
    return None


@dataclass(frozen=True)
class CallbackPolicy:
    """Public addresses, plus the allow-listed networks and host names (never metadata)."""

    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> CallbackPolicy:
        networks: list[Network] = []
        hosts: set[str] = set()
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if not HOST_RE.fullmatch(entry):
                raise ConfigError(f"callback_allow: {raw!r} is neither a network nor a host name")
            hosts.add(entry)
        return cls(tuple(networks), frozenset(hosts))

    def allows_host(self, host: str | None) -> bool:
        return bool(host) and (host or "").lower().rstrip(".") in self.hosts

    def refusal(self, host: str, host_allowed: bool = False) -> str | None:
        """Why a connection to ``host`` (an address) is refused, None when it may go."""
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return f"{host} is not an IP address"
        destinations = _destinations(address)
        if any(d in METADATA for d in destinations):
            return f"{address} is a cloud metadata address"
        kind = kind_of(address)
        if kind is None or host_allowed:
            return None
        if any(d in net for d in destinations for net in self.networks):
            return None
        carried = destinations[-1]
        # ::1 and :: fall in ::/96 too, but what they carry says nothing
        shown = carried != address and not (address.is_loopback or address.is_unspecified)
        return f"{address}{f' ({carried})' if shown else ''} is {kind}"

    def literal_refusal(self, url: str) -> str | None:
        """Why ``url`` can never be delivered when its host is an address written in it,
        None otherwise (a name is judged on what it resolves to, at connect time)."""
        host = yarl.URL(url).host or ""
        return self.refusal(host, self.allows_host(host)) if _is_address(host) else None

    def socket_factory(self, addr_info: AddrInfoType) -> socket.socket:
        """The connector's socket factory: the last look at an address before connecting."""
        family, kind, proto, _, sockaddr = addr_info
        delivery = DELIVERY.get()
        reason = self.refusal(str(sockaddr[0]), delivery is not None and delivery.host_allowed)
        if delivery is not None:
            delivery.tried += 1
        if reason is not None:
            if delivery is not None:
                delivery.refused.append(reason)
            raise CallbackRefused(f"{reason}: callbacks may not reach it")
        return socket.socket(family, kind, proto)

    def connector(self, resolver: AbstractResolver | None = None) -> aiohttp.TCPConnector:
        """A connector that connects only where this policy allows (``resolver``: the
        system's by default)."""
        return aiohttp.TCPConnector(socket_factory=self.socket_factory, resolver=resolver, limit=64)
