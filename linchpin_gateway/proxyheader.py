"""Who may speak the PROXY protocol to a ``haproxy:`` listener.

A PROXY header names the client's address, and every per-address limit and
the audit log believe it; so it is accepted only from the load balancers
named by ``--trusted-proxy ADDRESS[/PREFIX]``.  A connection from any other
peer is closed before a byte of it is read.  Without ``--trusted-proxy`` a
``haproxy:`` listener must be bound to loopback (its peers can then only be
this host, which is trusted); one bound beyond loopback refuses to start.

Twisted's PROXY parser (v1 and v2) does the parsing.  A v2 ``LOCAL`` header
(the load balancer's own health check) and an ``UNSPEC`` family carry no
client address: the connection is then the load balancer's own, judged by
its real address.  Version 2 TLVs are read past and ignored.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable

from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.haproxy import proxyEndpoint
from zope.interface import implementer

from .audit import audit

PREFIX = "haproxy:"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

_INTERFACE = re.compile(r"(?:^|:)interface=((?:\\.|[^:\\])*)")


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """``--trusted-proxy`` values as networks; ValueError names a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"--trusted-proxy {value!r}: not an address or ADDRESS/PREFIX") from None
    return tuple(networks)


def _interface(inner: str) -> str:
    """The ``interface=`` of an endpoint description (backslash escapes
    undone), '' when it listens on every interface."""
    if inner.startswith("unix:"):
        return "unix"
    found = _INTERFACE.findall(inner)  # Twisted binds the last one given
    return re.sub(r"\\(.)", r"\1", found[-1]) if found else ""


def loopback_only(inner: str) -> bool:
    """True when the endpoint ``inner`` can only be reached from this host."""
    interface = _interface(inner)
    if interface == "unix":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return interface == "localhost"


def is_haproxy(description: str) -> bool:
    """Twisted reads an endpoint's type without regard to case: so do we."""
    return description[:len(PREFIX)].lower() == PREFIX


def check_listeners(listen: Iterable[str], trusted: tuple[Network, ...]) -> None:
    """Refuse (ValueError, one line) a ``haproxy:`` listener beyond loopback
    when no load balancer is named."""
    if trusted:
        return
    for description in listen:
        if is_haproxy(description) and not loopback_only(description[len(PREFIX):]):
            raise ValueError(f"--listen {description} accepts PROXY headers from anywhere it can be reached: "
                             "name the load balancers with --trusted-proxy ADDRESS[/PREFIX], or bind it to "
                             "loopback (interface=127.0.0.1)")


def is_trusted(host: str, trusted: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False  # a UNIX socket's peer has no address: only trusted when nothing is named
    mapped = getattr(address, "ipv4_mapped", None)  # an IPv4 peer on a dual-stack socket
    return any(address in network or (mapped is not None and mapped in network) for network in trusted)


class _TrustedPeersOnly(Factory):
    """Builds the listener's protocol only for a trusted peer; for any other
    the answer is None, and Twisted closes the connection at once (counted
    in ``stats.untrusted_proxy_peers``)."""

    log = Logger(namespace="lmgateway")

    def __init__(self, factory, trusted: tuple[Network, ...], description: str, stats):
        self.factory = factory
        self.trusted = trusted
        self.description = description
        self.stats = stats

    def logPrefix(self):
        return getattr(self.factory, "logPrefix", lambda: self.factory.__class__.__name__)()

    def doStart(self):
        self.factory.doStart()

    def doStop(self):
        self.factory.doStop()

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None)
        if host is None or is_trusted(host, self.trusted):
            return self.factory.buildProtocol(addr)
        self.stats.untrusted_proxy_peers += 1
        audit("untrusted_proxy_peer", host=host, listener=self.description)
        return None


@implementer(IStreamServerEndpoint)
class _PeerFilter:
    def __init__(self, endpoint, trusted: tuple[Network, ...], description: str, stats):
        self.endpoint, self.trusted, self.description, self.stats = endpoint, trusted, description, stats

    def listen(self, factory):
        return self.endpoint.listen(_TrustedPeersOnly(factory, self.trusted, self.description, self.stats))


def server_endpoint(reactor, description: str, trusted: tuple[Network, ...], parse, stats):
    """The endpoint for ``--listen description``: a ``haproxy:`` one believes
    PROXY headers only from ``trusted`` (loopback when none is named);
    ``parse`` is ``serverFromString``, ``stats`` the gateway's counters."""
    if not is_haproxy(description):
        return parse(reactor, description)
    inner = description[len(PREFIX):]
    return proxyEndpoint(_PeerFilter(parse(reactor, inner), trusted or LOOPBACK, description, stats))
