"""The client side of MQTT (connector and device) and the reconnecting gateway link."""

import pytest
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from linchpin_common.gateway_client import GatewayAPI, GatewayError, GatewayLink
from linchpin_common.mqtt_client import ConnectionClosed, ConnectionRefused, MQTTClient
from linchpin_common.contract import wire


class Harness:
    def __init__(self, keep_alive=30):
        self.clock = Clock()
        self.sent = []
        self.parser = wire.Parser()
        self.dropped = 0
        self.messages = []
        self.client = MQTTClient(self.clock, self._send, self._drop, "user", "pw", keep_alive=keep_alive,
                                 on_message=lambda t, p: self.messages.append((t, p)))

    def _send(self, *parts):
        self.sent.extend(self.parser.feed(b"".join(parts)))

    def _drop(self):
        self.dropped += 1

    def feed(self, *packets):
        self.client.data_received(b"".join(wire.encode(p) for p in packets))

    def take(self):
        out, self.sent = self.sent, []
        return out


@pytest.fixture
def h():
    harness = Harness()
    harness.client.start()
    return harness


def test_connect_and_connack(h):
    (connect,) = h.take()
    assert connect.username == "user" and connect.password == b"pw" and connect.clean_session
    assert connect.keep_alive == 30
    h.feed(wire.Connack(0))
    assert h.client.connected.called and h.client.is_open


def test_refused(h):
    h.feed(wire.Connack(4))
    failures = []
    h.client.connected.addErrback(failures.append)
    assert failures[0].check(ConnectionRefused) and failures[0].value.code == 4
    assert h.dropped == 1


def test_subscribe_and_publish_acks(h):
    h.feed(wire.Connack(0))
    h.take()
    d = h.client.subscribe([("a/b", 1), ("c", 0)])
    (sub,) = h.take()
    h.feed(wire.Suback(sub.packet_id, (1, 0x80)))
    assert d.result == [1, 0x80]
    p = h.client.publish("t", b"x", qos=1)
    (pub,) = h.take()
    assert pub.qos == 1 and not p.called
    h.feed(wire.Puback(pub.packet_id))
    assert p.called


def test_incoming_publish_qos1_is_acked(h):
    h.feed(wire.Connack(0))
    h.take()
    h.feed(wire.Publish("devices/x/down", b"data", qos=1, packet_id=9))
    assert h.messages == [("devices/x/down", b"data")]
    assert h.take() == [wire.Puback(9)]


def test_keep_alive_pings_and_detects_silent_gateway(h):
    h.feed(wire.Connack(0))
    h.take()
    h.clock.advance(15)
    assert h.take() == [wire.Pingreq()]
    h.feed(wire.Pingresp())
    h.clock.advance(15)
    assert h.take() == [wire.Pingreq()]
    # the gateway goes silent: dropped within 2 keep-alive periods
    h.clock.advance(45)
    assert h.dropped == 1


def test_connection_lost_fails_waiters(h):
    h.feed(wire.Connack(0))
    d = h.client.subscribe([("a", 0)])
    h.client.connection_lost("gone")
    failures = []
    d.addErrback(failures.append)
    assert failures[0].check(ConnectionClosed)
    assert h.client.closed.called


class FakeClient:
    def __init__(self):
        self.closed = defer.Deferred()
        self.subscribed = []
        self.is_open = True

    def subscribe(self, topics):
        self.subscribed.append(topics)
        return defer.succeed([0] * len(topics))

    def close(self):
        self.closed.callback("closed")


class Connector:
    def __init__(self):
        self.attempts = []

    def __call__(self, reactor, url, username, password, **kw):
        d = defer.Deferred()
        self.attempts.append(d)
        return d


def test_link_backoff_doubles_to_60_with_jitter_and_resets():
    clock = Clock()
    connect = Connector()
    connected = []
    link = GatewayLink(clock, "http://gw", "u", "p", ["devices/+/up"], on_message=None,
                       on_connected=connected.append, rng=lambda: 1.0, connect=connect)
    link.startService()
    delays = []
    for _ in range(9):
        connect.attempts[-1].errback(ConnectionRefusedError())
        (call,) = clock.getDelayedCalls()
        delays.append(call.getTime() - clock.seconds())
        clock.advance(delays[-1])
    assert delays == pytest.approx([1, 2, 4, 8, 16, 32, 60, 60, 60])  # the window, drawn at its top
    client = FakeClient()
    connect.attempts[-1].callback(client)
    assert connected == [client] and client.subscribed == [[("devices/+/up", 0)]]
    assert link.failures == 0
    client.closed.callback("gateway restarted")
    (call,) = clock.getDelayedCalls()
    assert call.getTime() - clock.seconds() == pytest.approx(1)  # back to the start
    link.stopService()
    assert clock.getDelayedCalls() == []


def test_link_waits_are_spread_over_the_whole_window():
    """A fleet turned away together comes back spread over the window (a
    tenth of it to all of it), not bunched near its top."""
    link = GatewayLink(Clock(), "http://gw", "u", "p", [], on_message=None, rng=lambda: 0.0)
    link.failures = 10
    assert link.next_delay() == pytest.approx(6)  # the lowest of the 60 s window
    link.rng = lambda: 0.5
    assert link.next_delay() == pytest.approx(33)
    link.failures = 0
    assert link.next_delay() == pytest.approx(0.55)
    link.failures = 10_000  # no overflow, the window stays 60 s
    assert link.next_delay() == pytest.approx(33)


class _Answer(Resource):
    isLeaf = True

    def __init__(self, body: bytes):
        super().__init__()
        self.body = body

    def render(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        return self.body


def test_rest_answers_are_read_up_to_a_bound():
    answer = b'{"devices": []}'
    fits = GatewayAPI(StubTreq(_Answer(answer)), "https://gw", "inst", "pw", max_answer=len(answer))
    listed = defer.ensureDeferred(fits.list_devices())
    assert listed.result == []
    endless = GatewayAPI(StubTreq(_Answer(b'{"devices": [' + b" " * 4096 + b"]}")), "https://gw", "inst", "pw",
                         max_answer=1024)
    failed = defer.ensureDeferred(endless.list_devices())
    assert isinstance(failed.result.value, GatewayError) and "over 1024 bytes" in str(failed.result.value)
    failed.addErrback(lambda f: None)
