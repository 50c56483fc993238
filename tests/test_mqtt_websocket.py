"""The client WebSocket adapter (MQTTClientProtocol) against an in-memory
gateway over twisted.test.iosim: the real Autobahn client and server, no sockets."""

from __future__ import annotations

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim

from linchpin_common import mqtt_client
from linchpin_common.contract import topics, wire

LIMIT = wire.websocket_limit()


class FakeGateway(WebSocketServerProtocol):
    """Accepts any CONNECT, grants every SUBSCRIBE; the test scripts the rest."""

    def onConnect(self, request):
        self.factory.opened.append(self)
        return "mqtt"

    def onOpen(self):
        self.parser = wire.Parser()
        self.packets = []

    def onMessage(self, payload, isBinary):
        for packet in self.parser.feed(payload):
            self.packets.append(packet)
            if isinstance(packet, wire.Connect) and self.factory.answer_connect is not None:
                self.send(wire.Connack(self.factory.answer_connect))
            elif isinstance(packet, wire.Subscribe):
                self.send(wire.Suback(packet.packet_id, tuple(q for _, q in packet.topics)))

    def send(self, packet) -> None:
        self.sendMessage(wire.encode(packet), isBinary=True)

    def onClose(self, wasClean, code, reason):
        self.factory.closed.append(code)


class ClientAndGateway:
    def __init__(self, answer_connect=0):
        self.reactor = MemoryReactorClock()
        self.server_factory = WebSocketServerFactory("ws://gw.test/mqtt", protocols=["mqtt"],
                                                     reactor=self.reactor)
        self.server_factory.protocol = FakeGateway
        self.server_factory.setProtocolOptions(autoPingInterval=0, maxFramePayloadSize=1 << 26,
                                               maxMessagePayloadSize=1 << 26, autoFragmentSize=0)
        self.server_factory.opened = []
        self.server_factory.closed = []
        self.server_factory.answer_connect = answer_connect
        self.messages = []
        self.client_factory = mqtt_client.client_factory(self.reactor, "ws://gw.test/mqtt", "a" * 32, "secret",
                                                         on_message=lambda t, p: self.messages.append((t, p)))
        self.ready = []
        self.client_factory.session_ready.addBoth(self.ready.append)
        address = IPv4Address("TCP", "127.0.0.1", 80)
        self.client, self.server, self.pump = iosim.connectedServerAndClient(
            lambda: self.server_factory.buildProtocol(address),
            lambda: self.client_factory.buildProtocol(address), greet=False, clock=self.reactor)
        self.pump.flush()

    @property
    def gateway(self) -> FakeGateway:
        return self.server_factory.opened[0]

    def flush(self):
        self.pump.flush()
        self.reactor.advance(0)
        self.pump.flush()


@pytest.fixture
def world():
    return ClientAndGateway()


def test_session_over_the_websocket_adapter(world):
    (client,) = world.ready
    assert isinstance(client, mqtt_client.MQTTClient) and client.is_open
    (connect,) = world.gateway.packets
    assert connect.username == "a" * 32 and connect.password == b"secret"
    codes = []
    client.subscribe([(topics.UP_FILTER, 0), (topics.EVENTS, 0)]).addCallback(codes.append)
    world.flush()
    assert codes == [[0, 0]]
    world.gateway.send(wire.Publish(topics.up_topic("d" * 32), b"envelope", qos=1, packet_id=7))
    world.flush()
    assert world.messages == [(topics.up_topic("d" * 32), b"envelope")]
    assert world.gateway.packets[-1] == wire.Puback(7)
    client.publish(topics.down_topic("d" * 32), b"answer")
    world.flush()
    assert world.gateway.packets[-1] == wire.Publish(topics.down_topic("d" * 32), b"answer")
    closed = []
    client.closed.addCallback(closed.append)
    client.close()
    world.flush()
    assert world.gateway.packets[-1] == wire.Disconnect() and closed and not client.is_open


def _payload_for_frame(topic: str, frame: int, qos: int) -> bytes:
    """A payload that makes the PUBLISH (head and payload) exactly ``frame`` bytes."""
    n = frame
    while len(wire.encode_publish_head(topic.encode(), n, qos, 1 if qos else None)) + n != frame:
        n = frame - len(wire.encode_publish_head(topic.encode(), n, qos, 1 if qos else None))
    return (bytes(range(256)) * (n // 256 + 1))[:n]


# Each length form of RFC 6455 5.2 at its edges (7 bits up to 125, 16 bits
# from 126 to 65535, 64 bits from 65536): the hand-made frames must use the
# shortest one, as the Autobahn server checks.
@pytest.mark.parametrize("frame", [60, 125, 126, 1024, 1025, 65535, 65536, 262144 + 60])
def test_publish_frames_its_head_and_payload_as_autobahn_reads_them(world, frame):
    """The client masks and frames a PUBLISH's head and payload itself: a
    plain Autobahn server reads every length form, QoS 0 and 1, and each
    frame has a fresh masking key."""
    (client,) = world.ready
    topic = topics.down_topic("d" * 32)
    payloads = [_payload_for_frame(topic, frame, 0), bytearray(_payload_for_frame(topic, frame, 1))]
    keys, sizes = [], []
    transport = world.client.transport
    write, write_sequence = transport.write, transport.writeSequence

    def key_of(frame: bytes) -> bytes:
        at = {126: 4, 127: 10}.get(frame[1] & 0x7F, 2)
        assert frame[1] & 0x80  # masked
        sizes.append(frame[1] & 0x7F)
        return frame[at:at + 4]

    transport.write = lambda data: (keys.append(key_of(data)), write(data))
    # (iosim's writeSequence writes each part with write: the original one here)
    transport.writeSequence = lambda parts: (keys.append(key_of(parts[0])), [write(p) for p in parts])
    client.publish(topic, payloads[0])
    client.publish(topic, payloads[1], qos=1)
    world.flush()
    assert world.gateway.packets[-2:] == [wire.Publish(topic, payloads[0]),
                                          wire.Publish(topic, bytes(payloads[1]), qos=1,
                                                       packet_id=world.gateway.packets[-1].packet_id)]
    assert len(keys) == 2 and keys[0] != keys[1]
    assert sizes == [frame if frame < 126 else 126 if frame < 65536 else 127] * 2


def test_refused_connect_fails_session_ready():
    world = ClientAndGateway(answer_connect=4)
    (failure,) = world.ready
    assert failure.check(mqtt_client.ConnectionRefused) and failure.value.code == 4


def test_handshake_refused_fails_session_ready():
    world = ClientAndGateway()
    world.ready.clear()

    class Refusing(FakeGateway):
        def onConnect(self, request):
            from autobahn.websocket.types import ConnectionDeny
            raise ConnectionDeny(403, "no")

    world.server_factory.protocol = Refusing
    world.client_factory.session_ready = mqtt_client.defer.Deferred()
    world.client_factory.session_ready.addBoth(world.ready.append)
    address = IPv4Address("TCP", "127.0.0.1", 80)
    _, _, pump = iosim.connectedServerAndClient(lambda: world.server_factory.buildProtocol(address),
                                                lambda: world.client_factory.buildProtocol(address),
                                                greet=False, clock=world.reactor)
    pump.flush()
    (failure,) = world.ready
    assert failure.check(mqtt_client.ConnectionClosed)


def test_oversize_websocket_message_from_a_malicious_gateway_is_refused(world):
    """A PUBLISH a little over the gateway's limit, in one message: the client
    closes the connection instead of buffering it, and delivers nothing."""
    (client,) = world.ready
    closed = []
    client.closed.addCallback(closed.append)
    payload = b"x" * (LIMIT - 10)
    world.gateway.send(wire.Publish(topics.down_topic("d" * 32), payload))
    world.flush()
    world.reactor.advance(10)
    world.flush()
    assert world.messages == [] and closed and not client.is_open
    assert world.client.droppedByMe and "exceeds payload limit" in world.client.wasNotCleanReason


def test_oversize_frame_is_refused_before_it_is_buffered(world):
    (client,) = world.ready
    closed = []
    client.closed.addCallback(closed.append)
    # only the frame header of a 64 MiB frame: refused on the announced length
    world.gateway.transport.write(b"\x82\x7f" + (64 << 20).to_bytes(8, "big"))
    world.flush()
    world.reactor.advance(10)
    world.flush()
    assert closed and not client.is_open
    assert world.client.droppedByMe and "exceeds payload limit" in world.client.wasNotCleanReason


def test_oversize_mqtt_packet_in_small_frames_is_refused(world):
    """A PUBLISH announcing more than 1 MiB, sent in frames each within the
    WebSocket limit: the MQTT parser drops the connection on the length."""
    (client,) = world.ready
    closed = []
    client.closed.addCallback(closed.append)
    packet = wire.encode(wire.Publish(topics.down_topic("d" * 32), b"y" * (wire.DEFAULT_MAX_REMAINING_LENGTH + 1)))
    world.gateway.sendMessage(packet[:64 << 10], isBinary=True)
    world.flush()
    world.reactor.advance(10)
    world.flush()
    assert world.messages == [] and closed and not client.is_open


def test_client_limits_match_the_gateway_side():
    from linchpin_gateway.websocket import websocket_options

    factory = mqtt_client.client_factory(MemoryReactorClock(), "ws://gw.test/mqtt", "u", "p", on_message=None)
    gateway = websocket_options(wire.DEFAULT_MAX_REMAINING_LENGTH)
    assert factory.maxFramePayloadSize == gateway["maxFramePayloadSize"] == LIMIT
    assert factory.maxMessagePayloadSize == gateway["maxMessagePayloadSize"] == LIMIT
