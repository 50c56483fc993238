"""Issue 10 item 2 at the HTTP edge: request deadline, connections per
address, and a WebSocket's CONNECT deadline counted from the accept.

Everything runs in memory: the gateway's real Site on a MemoryReactorClock,
sockets played by StringTransport.
"""

import base64
import os

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET
from twisted.internet.testing import StringTransport

from linchpin_common.contract import wire
from linchpin_gateway.edge import GuardedSite
from linchpin_gateway.session import State
from linchpin_gateway.websocket import HANDSHAKE_LEFTOVERS, SHARED_TRAFFIC_STATS, MQTTServerProtocol
from tests.support import connect_packet

HEAD = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"


class Socket(StringTransport):
    aborted = False
    protocol = None  # a real socket's protocol changes when it becomes a WebSocket

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def abortConnection(self):
        self.aborted = True
        super().abortConnection()


def connect(gw, host="192.0.2.10"):
    channel = gw.site.buildProtocol(IPv4Address("TCP", host, 40000))
    sock = Socket(peerAddress=IPv4Address("TCP", host, 40000))
    sock.protocol = channel
    channel.makeConnection(sock)
    return channel, sock


def test_the_site_is_guarded(make_gateway):
    assert isinstance(make_gateway().site, GuardedSite)


def test_slow_loris_headers_are_cut_at_the_deadline(make_gateway):
    """Before: the idle timeout restarted on every byte, so a header byte
    every few seconds held the connection for ever."""
    gw = make_gateway()
    reactor = gw.reactor
    channel, sock = connect(gw)
    for byte in HEAD[:-4]:
        channel.dataReceived(bytes([byte]))
        reactor.advance(1)
        if sock.aborted:
            break
    assert sock.aborted
    assert reactor.seconds() - channel.accepted_at <= gw.site.request_deadline + 1


def test_a_trickled_body_is_cut_too(make_gateway):
    gw = make_gateway()
    channel, sock = connect(gw)
    channel.dataReceived(b"POST /api/v1/devices/setup HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n")
    for _ in range(40):
        channel.dataReceived(b" ")
        gw.reactor.advance(1)
    assert sock.aborted


def test_a_prompt_request_is_served_and_the_next_one_gets_its_own_deadline(make_gateway):
    gw = make_gateway()
    channel, sock = connect(gw)
    gw.reactor.advance(gw.site.request_deadline - 1)
    channel.dataReceived(HEAD)
    assert sock.value().startswith(b"HTTP/1.1 200")
    gw.reactor.advance(gw.site.request_deadline - 1)  # idle between requests, within the deadline
    assert not sock.aborted
    channel.dataReceived(HEAD)
    assert sock.value().count(b"HTTP/1.1 200") == 2
    gw.reactor.advance(gw.site.request_deadline)
    assert sock.aborted  # an idle keep-alive connection is closed at the deadline too


def test_connections_per_address_are_capped(make_gateway):
    gw = make_gateway()
    gw.site.connections.per_key = 3
    mine = [connect(gw) for _ in range(4)]
    for channel, sock in mine:
        channel.dataReceived(HEAD)
    assert [sock.aborted for _, sock in mine] == [False, False, False, True]
    assert mine[3][1].value() == b""  # refused before anything was read
    other, sock = connect(gw, "198.51.100.3")
    other.dataReceived(HEAD)
    assert sock.value().startswith(b"HTTP/1.1 200")
    mine[0][0].connectionLost(None)
    again, sock = connect(gw)
    again.dataReceived(HEAD)
    assert not sock.aborted
    for channel, _ in mine[1:3] + [(again, None), (other, None)]:
        channel.connectionLost(None)
    assert len(gw.site.connections) == 0


def test_an_ipv6_network_counts_as_one_address(make_gateway):
    gw = make_gateway()
    gw.site.connections.per_key = 2
    socks = []
    for i in range(3):
        channel = gw.site.buildProtocol(None)
        sock = Socket(peerAddress=IPv4Address("TCP", f"2001:db8:5:6::{i + 1}", 40000))
        channel.makeConnection(sock)
        channel.dataReceived(HEAD)
        socks.append(sock)
    assert [s.aborted for s in socks] == [False, False, True]


def upgrade(channel, extra: bytes = b""):
    key = base64.b64encode(os.urandom(16))
    channel.dataReceived(b"GET /mqtt HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n"
                         b"Sec-WebSocket-Protocol: mqtt\r\n" + extra + b"\r\n")


def test_a_websocket_keeps_its_slot_and_its_accept_time(make_gateway):
    gw = make_gateway()
    gw.site.connections.per_key = 1
    channel, sock = connect(gw)
    gw.reactor.advance(8)  # a slow upgrade request...
    upgrade(channel)
    assert b"101 Switching Protocols" in sock.value()
    (ws,) = gw.ws_factory.live
    assert ws.mqtt is not None
    second, sock2 = connect(gw)
    second.dataReceived(HEAD)
    assert sock2.aborted  # the WebSocket still holds the address's one slot
    gw.reactor.advance(2.5)  # ...leaves 2 s of the 10 s for the CONNECT
    assert ws.mqtt.state is State.CLOSED  # no CONNECT within 10 s of the accept
    ws.connectionLost(Failure(ConnectionDone()))
    third, sock3 = connect(gw)
    third.dataReceived(HEAD)
    assert not sock3.aborted


def test_pending_logins_per_address_are_capped(make_gateway):
    gw = make_gateway()
    gw.ws_factory.pending_per_address.per_key = 2
    answers = []
    for _ in range(3):
        channel, sock = connect(gw)
        upgrade(channel)
        answers.append(sock.value().split(b"\r\n", 1)[0])
    assert answers[:2] == [b"HTTP/1.1 101 Switching Protocols"] * 2
    assert b"503" in answers[2]
    channel, sock = connect(gw, "198.51.100.4")  # another address is not affected
    upgrade(channel)
    assert b"101" in sock.value().split(b"\r\n", 1)[0]


def test_a_node_full_of_pending_logins_refuses_before_the_websocket_and_logs_it_once(make_gateway):
    """A restarted node meets thousands of reconnections at once: each one
    past the pending logins' cap is refused with a plain 503 before any
    WebSocket machinery (no protocol built, no Autobahn log lines), and the
    refusals are logged as one line per interval, not one each."""
    from twisted.logger import globalLogPublisher

    gw = make_gateway()
    gw.ws_factory.max_unauthenticated = 2
    gw.ws_factory.pending_per_address.per_key = 1000
    warnings = []

    def observe(event):
        if event.get("log_level").name == "warn":
            warnings.append(event.get("log_format", ""))

    globalLogPublisher.addObserver(observe)
    try:
        for _ in range(2):
            channel, sock = connect(gw)
            upgrade(channel)
            assert b"101" in sock.value().split(b"\r\n", 1)[0]
        refused = []
        for _ in range(50):
            channel, sock = connect(gw)
            upgrade(channel)
            refused.append(sock.value())
        gw.reactor.advance(10)  # the interval ends: one line for the rest
    finally:
        globalLogPublisher.removeObserver(observe)
    assert all(r.startswith(b"HTTP/1.1 503") and b'"too many pending logins"' in r for r in refused)
    assert len(gw.ws_factory.live) == 2  # no WebSocket protocol for the refused
    about = [w for w in warnings if "await authentication" in w]
    assert len(about) == 2 and "more like it" in about[1]  # the first at once, then one for 49


def test_an_accepted_login_frees_its_pending_slot(make_gateway):
    gw = make_gateway()
    gw.ws_factory.pending_per_address.per_key = 1
    from tests.doubles import Client

    inst = Client(gw).register()
    channel, sock = connect(gw)
    upgrade(channel)
    (ws,) = gw.ws_factory.live
    ws.mqtt.data_received(connect_packet(inst["instance_id"], inst["instance_password"]))
    assert ws.mqtt.state is State.CONNECTED
    assert wire.CONNACK_ACCEPTED == 0 and gw.ws_factory.pending_per_address.held("192.0.2.10") == 0
    channel2, sock2 = connect(gw)
    upgrade(channel2)
    assert b"101" in sock2.value().split(b"\r\n", 1)[0]


def test_a_pipelined_request_being_handled_is_not_cut(make_gateway):
    """The second of two pipelined requests takes longer than the deadline
    to answer: it is being handled, so the deadline does not apply to it."""
    gw = make_gateway()
    channel, sock = connect(gw)
    held = []
    resource = gw.site.resource

    class Slow:
        isLeaf = True

        def render(self, request):
            held.append(request)
            return NOT_DONE_YET

    resource.putChild(b"slow", Slow())
    slow = b"GET /slow HTTP/1.1\r\nHost: gw\r\n\r\n"
    channel.dataReceived(slow + slow)  # the second waits in the channel's buffer
    assert len(held) == 1
    held[0].write(b"first")
    held[0].finish()  # the buffered request is handled from inside this
    assert len(held) == 2
    gw.reactor.advance(gw.site.request_deadline * 3)
    assert not sock.aborted
    held[1].write(b"done")
    held[1].finish()
    assert b"\r\ndone\r\n" in sock.value() and not sock.aborted


def test_pings_while_the_socket_is_backed_up_are_answered_once(make_gateway):
    """A client that pings and never reads: before, every ping queued a pong
    in the socket's send buffer, without bound."""
    from tests.test_wsframes import PING, PONG, frame, server_frames

    gw = make_gateway()
    channel, sock = connect(gw)
    upgrade(channel)
    (ws,) = gw.ws_factory.live
    sock.clear()
    sock.producer.pauseProducing()  # the socket's send buffer is full
    for i in range(1000):
        ws.dataReceived(frame(PING, b"%d" % i))
    assert sock.value() == b""
    sock.producer.resumeProducing()
    assert server_frames(sock.value()) == [(PONG, b"999")]  # the latest only (RFC 6455 section 5.5.3)
    ws.dataReceived(frame(PING, b"again"))
    assert server_frames(sock.value()) == [(PONG, b"999"), (PONG, b"again")]


def test_before_login_a_websocket_message_is_capped_small_then_whole(make_gateway):
    """Before: a connection that had not logged in could hold a message in
    progress up to the full packet cap (1 MiB), and with empty fragments
    far more; now a message before CONNACK 0 is at most PRE_LOGIN_MESSAGE."""
    from linchpin_common.rawws import client_frame, masked_header, new_key
    from linchpin_gateway.session import PRE_LOGIN_MESSAGE
    from tests.doubles import Client

    gw = make_gateway()
    inst = Client(gw).register()
    channel, sock = connect(gw)
    upgrade(channel)
    (ws,) = gw.ws_factory.live
    assert ws._frames.max_message == PRE_LOGIN_MESSAGE < gw.ws_factory.maxMessagePayloadSize
    sock.protocol.dataReceived(masked_header(PRE_LOGIN_MESSAGE + 1) + new_key())  # refused from its header
    assert sock.aborted or sock.disconnecting
    ws.connectionLost(Failure(ConnectionDone()))

    channel, sock = connect(gw, "192.0.2.11")
    upgrade(channel)
    (ws,) = gw.ws_factory.live
    sock.protocol.dataReceived(client_frame(connect_packet(inst["instance_id"], inst["instance_password"]),
                                            new_key()))
    assert ws.mqtt.state is State.CONNECTED  # the whole cap from now on
    assert ws._frames.max_message == gw.ws_factory.maxMessagePayloadSize


def test_before_login_the_mqtt_parser_holds_no_more_than_the_message_cap(make_gateway):
    """Before: a first packet announcing 1 MiB, sent in 64 KiB messages, was
    held whole by a connection that never logged in."""
    from linchpin_common.rawws import client_frame, new_key
    from linchpin_gateway.session import PRE_LOGIN_MESSAGE

    gw = make_gateway()
    channel, sock = connect(gw)
    upgrade(channel)
    (ws,) = gw.ws_factory.live
    assert ws.mqtt.parser.max_remaining_length == PRE_LOGIN_MESSAGE
    header = bytes([0x10, 0x80, 0x80, 0x40])  # CONNECT, remaining length 1 MiB
    sock.protocol.dataReceived(client_frame(header + bytes(1000), new_key()))
    assert sock.aborted or sock.disconnecting or ws.mqtt.state is State.CLOSED
    assert ws.mqtt.parser.buffered == 0


def test_a_connection_costs_autobahn_no_pretty_printing(make_gateway, monkeypatch):
    """Autobahn pretty-prints the options it copied, for a debug line, on
    every connection whether debug is logged or not; the gateway's protocol
    class leaves it nothing to copy, so nothing to print (a restarted node
    spent a tenth of its reactor's time there)."""
    from autobahn.websocket import protocol as autobahn_protocol

    formatted = []
    real = autobahn_protocol.pformat
    monkeypatch.setattr(autobahn_protocol, "pformat", lambda obj: formatted.append(obj) or real(obj))
    gw = make_gateway()
    for host in ["192.0.2.10", "198.51.100.4"]:
        channel, sock = connect(gw, host)
        upgrade(channel)
        assert sock.value().startswith(b"HTTP/1.1 101")
    assert formatted == [[], []]


def test_refused_upgrades_are_counted_not_access_logged(make_gateway):
    """Each refusal of a full node is counted in the factory's summary line;
    the access log skips them (a restarted node wrote 37,000 such lines in a
    minute), and logs every other request as before."""
    from twisted.logger import formatEvent, globalLogPublisher

    gw = make_gateway()
    gw.ws_factory.max_unauthenticated = 1
    gw.site.doStart()  # the access log is opened when the site starts
    lines = []
    globalLogPublisher.addObserver(lines.append)
    try:
        for host in ["192.0.2.10", "192.0.2.11", "192.0.2.12"]:
            channel, sock = connect(gw, host)
            upgrade(channel)
        channel, sock = connect(gw, "192.0.2.13")
        channel.dataReceived(b"GET /nowhere HTTP/1.1\r\nHost: gw.test\r\n\r\n")
    finally:
        globalLogPublisher.removeObserver(lines.append)
        gw.site.doStop()
    text = [formatEvent(event) for event in lines]
    assert sum("await authentication" in t for t in text) == 1  # the first refusal; the next is counted
    assert not [t for t in text if '"GET /mqtt HTTP/1.1" 503' in t]
    assert [t for t in text if '"GET /nowhere HTTP/1.1" 404' in t]


def test_a_websocket_holds_no_copy_of_the_factorys_options(make_gateway):
    """Autobahn copies its ~40 options into each connection unless the
    protocol class has them: the gateway's protocol class carries them, so
    ten thousand sessions do not hold ten thousand copies (about 1.5 KiB
    each), and a change of the factory's options still reaches new ones.
    What the opening handshake left behind goes once the WebSocket is open."""
    gw = make_gateway()
    factory = gw.ws_factory
    channel, sock = connect(gw)
    upgrade(channel)
    (ws,) = factory.live
    options = set(MQTTServerProtocol.CONFIG_ATTRS)  # Autobahn's list; the built class has nothing left to copy
    assert len(options) > 20 and not options & set(vars(ws))
    assert [getattr(ws, name) for name in HANDSHAKE_LEFTOVERS] == [None] * len(HANDSHAKE_LEFTOVERS)
    assert ws.websocket_protocol_in_use == "mqtt"  # what the session still needs stays
    assert ws.trafficStats is SHARED_TRAFFIC_STATS  # nobody reads a session's own counts
    assert ws.maxMessagePayloadSize == factory.maxMessagePayloadSize and ws.openHandshakeTimeout == 10
    factory.setProtocolOptions(openHandshakeTimeout=3)
    channel2, sock2 = connect(gw, "198.51.100.4")
    # as browsers do: offered compression is declined (the option is a function, not a method)
    upgrade(channel2, b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                      b"Origin: https://app.example\r\n")
    head = sock2.value().split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 101") and b"Sec-WebSocket-Extensions" not in head
    (newer,) = factory.live - {ws}
    assert newer.openHandshakeTimeout == 3 and not options & set(vars(newer))
