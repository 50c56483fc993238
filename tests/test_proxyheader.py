"""PROXY headers believed only from trusted load balancers (linchpin_gateway.proxyheader)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python import usage

from linchpin_gateway.metrics import GatewayCollector
from linchpin_gateway.proxyheader import LOOPBACK, is_trusted, loopback_only, parse_networks, server_endpoint
from linchpin_gateway.tap import Options
from tests.support import BIN, TIMEOUT, Process

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
V2 = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(command: int, source: bytes = b"", tlvs: bytes = b"") -> bytes:
    """A PROXY v2 header; ``source`` 4 bytes of IPv4 (TCP) or nothing (UNSPEC)."""
    if source:
        addresses = source + bytes([10, 0, 0, 1]) + struct.pack("!HH", 40000, 443)
        return V2 + bytes([0x20 | command, 0x11]) + struct.pack("!H", len(addresses) + len(tlvs)) + addresses + tlvs
    return V2 + bytes([0x20 | command, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs


class Captured:
    """A listening endpoint that only keeps the factory it was given."""

    def listen(self, factory):
        self.factory = factory
        return defer.succeed(None)


def listening(gw, description: str, trusted: tuple) -> object:
    captured = Captured()
    server_endpoint(gw.reactor, description, trusted, lambda reactor, inner: captured, gw.stats).listen(gw.site)
    return captured.factory


def connection(factory, peer: str):
    address = (IPv6Address if ":" in peer else IPv4Address)("TCP", peer, 50000)
    protocol = factory.buildProtocol(address)
    if protocol is None:
        return None, None
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport


def test_a_haproxy_listener_beyond_loopback_needs_trusted_proxies():
    """Before: `--listen haproxy:tcp:8080` (all interfaces) believed a
    PROXY header from anyone who reached it."""
    with pytest.raises(usage.UsageError) as refused:
        Options().parseOptions(["--listen", "haproxy:tcp:8080"])
    assert "--trusted-proxy" in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--listen", "haproxy:tcp:8080:interface=192.0.2.1"])
    for listen in ("haproxy:tcp:8080:interface=127.0.0.1", r"haproxy:tcp6:8080:interface=\:\:1",
                   "haproxy:unix:/run/lm.sock", "tcp:8080"):
        options = Options()
        options.parseOptions(["--listen", listen])
        assert options.config.trusted_networks == ()
    options = Options()
    options.parseOptions(["--listen", "haproxy:tcp:8080", "--trusted-proxy", "10.0.0.0/24",
                          "--trusted-proxy", "2001:db8::7"])
    assert [str(n) for n in options.config.trusted_networks] == ["10.0.0.0/24", "2001:db8::7/128"]
    with pytest.raises(usage.UsageError) as refused:
        Options().parseOptions(["--trusted-proxy", "10.0.0.300"])
    assert "--trusted-proxy '10.0.0.300'" in str(refused.value)


def test_loopback_and_prefix_matching():
    assert loopback_only("tcp:8080:interface=127.0.0.1") and loopback_only(r"tcp6:1:interface=\:\:1")
    assert not loopback_only("tcp:8080") and not loopback_only("tcp:8080:interface=0.0.0.0")
    trusted = parse_networks(["10.0.0.0/24", "2001:db8::/64"])
    assert is_trusted("10.0.0.200", trusted) and not is_trusted("10.0.1.1", trusted)
    assert is_trusted("2001:db8::99", trusted) and not is_trusted("2001:db9::1", trusted)
    assert is_trusted("::ffff:10.0.0.5", trusted)  # an IPv4 peer on a dual-stack socket
    assert is_trusted("::ffff:10.0.0.5", parse_networks(["::ffff:10.0.0.0/120"]))  # named as it is seen
    assert not is_trusted("::ffff:10.0.1.5", parse_networks(["::ffff:10.0.0.0/120"]))
    assert is_trusted("127.0.0.9", LOOPBACK) and not is_trusted("192.0.2.1", LOOPBACK)


def test_a_peer_not_trusted_is_closed_before_its_header_is_read(make_gateway):
    gw = make_gateway()
    factory = listening(gw, "haproxy:tcp:0", parse_networks(["10.0.0.0/24"]))
    with capturedLogs() as events:
        protocol, _ = connection(factory, "203.0.113.9")
    assert protocol is None  # Twisted closes a connection whose factory builds nothing
    assert [(e.get("audit"), e.get("host")) for e in events if e.get("audit")] == [
        ("untrusted_proxy_peer", "203.0.113.9")]
    assert gw.site.connections.held("203.0.113.9") == 0
    metrics = {family.name: family.samples[0].value for family in GatewayCollector(gw).collect()
               if family.samples}
    assert metrics["lmgateway_untrusted_proxy_peers"] == 1


def test_a_trusted_load_balancer_names_the_client(make_gateway):
    gw = make_gateway()
    factory = listening(gw, "haproxy:tcp:0", parse_networks(["10.0.0.0/24"]))
    protocol, transport = connection(factory, "10.0.0.7")
    protocol.dataReceived(b"PROXY TCP4 192.0.2.55 10.0.0.1 40000 443\r\n" + HEALTHZ)
    assert transport.value().startswith(b"HTTP/1.1 200")
    assert protocol.getPeer().host == "192.0.2.55"
    assert gw.site.connections.held("192.0.2.55") == 1 and gw.site.connections.held("10.0.0.7") == 0


def test_without_trusted_proxies_only_loopback_peers_speak(make_gateway):
    gw = make_gateway()
    factory = listening(gw, "haproxy:tcp:0:interface=127.0.0.1", ())
    assert connection(factory, "198.51.100.1")[0] is None
    protocol, transport = connection(factory, "127.0.0.1")
    protocol.dataReceived(b"PROXY TCP4 192.0.2.56 127.0.0.1 40000 443\r\n" + HEALTHZ)
    assert protocol.getPeer().host == "192.0.2.56"


def test_v2_local_is_the_load_balancer_itself_and_tlvs_are_read_past(make_gateway):
    gw = make_gateway()
    factory = listening(gw, "haproxy:tcp:0", parse_networks(["10.0.0.7"]))
    protocol, transport = connection(factory, "10.0.0.7")
    protocol.dataReceived(v2(0, tlvs=b"\x04\x00\x02hi") + HEALTHZ)  # LOCAL: a health check
    assert transport.value().startswith(b"HTTP/1.1 200")
    assert protocol.getPeer().host == "10.0.0.7"
    protocol, transport = connection(factory, "10.0.0.7")
    protocol.dataReceived(v2(1, bytes([192, 0, 2, 77]), tlvs=b"\x01\x00\x02h2\x04\x00\x03abc") + HEALTHZ)
    assert transport.value().startswith(b"HTTP/1.1 200")
    assert protocol.getPeer().host == "192.0.2.77"


def answer(port: int, source: str, data: bytes) -> bytes:
    """What the listener on ``port`` answers ``data`` sent from ``source``
    (b"" when it closes the connection without a word)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0)) as sock:
        try:
            sock.sendall(data)
            return sock.recv(64)
        except (ConnectionResetError, BrokenPipeError):
            return b""


def test_twistd_believes_only_its_trusted_proxy(tmp_path):
    """The real reactor and command line: an open haproxy: listener does not
    start; on loopback with a --trusted-proxy, a PROXY header from any other
    loopback address is not even answered."""
    twistd = [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "lmgateway", "--data-dir", str(tmp_path)]
    refused = subprocess.run([*twistd, "--listen", "haproxy:tcp:0"], capture_output=True, text=True,
                             timeout=TIMEOUT)
    assert refused.returncode == 1 and "Traceback" not in refused.stdout + refused.stderr
    assert "--trusted-proxy ADDRESS[/PREFIX]" in refused.stdout.splitlines()[-1]
    gw = Process([*twistd, "--listen", "haproxy:tcp:0:interface=127.0.0.1", "--trusted-proxy", "127.0.0.2"])
    port = int(gw.wait_for(r"lmgateway listening on haproxy:\S+ at 127\.0\.0\.1:(\d+)").group(1))
    header = b"PROXY TCP4 198.18.0.1 127.0.0.1 40000 443\r\n"
    assert answer(port, "127.0.0.1", header + HEALTHZ) == b""
    gw.wait_for(r"audit untrusted_proxy_peer host=127\.0\.0\.1 ")
    assert answer(port, "127.0.0.2", header + HEALTHZ).startswith(b"HTTP/1.1 200")
    assert gw.stop() == 0


def test_the_endpoint_type_is_read_without_regard_to_case(make_gateway):
    """Before: `HAPROXY:tcp:8080` went to Twisted's own PROXY endpoint, past
    both the start-up check and the peer filter."""
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--listen", "HAPROXY:tcp:8080"])
    with pytest.raises(usage.UsageError):  # Twisted binds the last interface given
        Options().parseOptions(["--listen", "haproxy:tcp:8080:interface=127.0.0.1:interface=0.0.0.0"])
    gw = make_gateway()
    factory = listening(gw, "Haproxy:tcp:0", parse_networks(["10.0.0.0/24"]))
    assert connection(factory, "203.0.113.9")[0] is None
