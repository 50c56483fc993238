"""ConnectorService in memory: resync with the gateway's device list, gateway
events (revocation), routing of envelopes. The gateway's REST API is a
twisted.web resource behind treq's StubTreq, the MQTT session a fake client,
the clock a MemoryReactorClock, state work inline."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.internet.testing import MemoryReactorClock
from twisted.web import resource, server

from linchpin_common.contract import e2e, topics
from linchpin_common.workers import InlineWorker
from linchpin_connector.connector import ConnectorService
from linchpin_connector.state import ConnectorState

INSTANCE = "a" * 32
A, B, C = "a1" * 16, "b2" * 16, "c3" * 16


class DeviceList(resource.Resource):
    """``GET /api/v1/devices``; answers at once, or holds the request until
    the test calls :meth:`answer` (``hold = True``)."""

    isLeaf = True

    def __init__(self, devices):
        super().__init__()
        self.devices = list(devices)
        self.hold = False
        self.held = []
        self.calls = 0

    def render_GET(self, request):
        assert request.path == b"/api/v1/devices"
        self.calls += 1
        if self.hold:
            self.held.append(request)
            return server.NOT_DONE_YET
        return self._body(request)

    def _body(self, request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"devices": [{"device_id": d, "state": "active", "connected": False}
                                       for d in self.devices]}).encode()

    def answer(self):
        for request in self.held:
            request.write(self._body(request))
            request.finish()
        self.held = []


class FakeClient:
    def __init__(self):
        self.closed = defer.Deferred()
        self.is_open = True
        self.published = []
        self.subscribed = []

    def subscribe(self, filters):
        self.subscribed.append(list(filters))
        return defer.succeed([0] * len(filters))

    def publish(self, topic, payload, qos=0):
        self.published.append((topic, payload))
        return defer.succeed(None)

    def close(self):
        if self.is_open:
            self.is_open = False
            self.closed.callback("closed")


class ConnectorUnderTest:
    def __init__(self, tmp_path, devices=(A, B), listed=(A, B)):
        self.state = ConnectorState(str(tmp_path / "connector"))
        static = X25519PrivateKey.generate()
        self.state.save_registration("http://127.0.0.1:1", INSTANCE, "pw", static.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()))
        for device_id in devices:
            self.state.add_device(device_id, "alice", bytes(32))
        self.reactor = MemoryReactorClock()
        self.gateway = DeviceList(listed)
        self.http = StubTreq(self.gateway)
        self.clients: list[FakeClient] = []
        self.service = ConnectorService(self.reactor, str(tmp_path / "connector"), "http://127.0.0.1:2",
                                        connect=self._connect, gateway_http=self.http, worker=InlineWorker())

    def _connect(self, reactor, url, username, password, **kw):
        assert (url, username, password) == ("http://127.0.0.1:1", INSTANCE, "pw")
        client = FakeClient()
        self.clients.append(client)
        return defer.succeed(client)

    def start(self):
        self.service.startService()
        self.http.flush()

    def ids(self):
        return [d.device_id for d in self.state.devices()]

    def stop(self):
        self.service.stopService()
        self.state.close()


@pytest.fixture
def world(tmp_path):
    w = ConnectorUnderTest(tmp_path)
    yield w
    w.stop()


def live_channel(world, device_id):
    """Put a live E2E channel for ``device_id`` in place, as a handshake would."""
    from linchpin_common.contract.channel import ChannelEndpoint
    from linchpin_connector.connector import _Channel

    session = e2e.Session(b"\x01" * 8, device_id, bytes(32), bytes([1] * 32), "connector")
    channel = _Channel(ChannelEndpoint(session), None, b"", b"")

    class Proxy:
        closed = False

        def close(self):
            self.closed = True

    channel.proxy = Proxy()
    world.service.channels.channels[device_id] = channel
    return channel


def test_connect_subscribes_and_resync_keeps_listed_devices(world):
    world.start()
    (client,) = world.clients
    assert client.subscribed == [[(topics.UP_FILTER, 0), (topics.EVENTS, 0)]]
    assert world.gateway.calls == 1
    assert world.ids() == [A, B]


def test_resync_removes_devices_revoked_while_away(tmp_path):
    world = ConnectorUnderTest(tmp_path, devices=(A, B), listed=(A,))
    try:
        world.gateway.hold = True
        world.start()
        channel = live_channel(world, B)
        world.gateway.answer()
        world.http.flush()
        assert world.ids() == [A]
        assert B not in world.service.channels.channels and channel.proxy.closed and not channel.endpoint.live
    finally:
        world.stop()


def test_resync_keeps_a_device_added_while_the_list_was_fetched(tmp_path):
    """Issue 10 item 13: the daemon asks for the list, the CLI adds a device
    (gateway first, then local state), the list arrives without it."""
    world = ConnectorUnderTest(tmp_path, devices=(A,), listed=(A,))
    try:
        world.gateway.hold = True
        world.start()
        assert len(world.gateway.held) == 1  # the list is on its way
        world.state.add_device(C, "bob", bytes(32))  # lmconnector device add, meanwhile
        world.gateway.answer()
        world.http.flush()
        assert world.ids() == [A, C]
    finally:
        world.stop()


def test_resync_failure_removes_nothing(tmp_path):
    world = ConnectorUnderTest(tmp_path, devices=(A, B), listed=())
    try:
        world.gateway.render_GET = lambda request: (request.setResponseCode(503), b"{}")[1]
        world.start()
        assert world.ids() == [A, B]
    finally:
        world.stop()


def test_every_reconnect_resyncs(world):
    world.start()
    world.gateway.devices = [A]
    world.clients[0].close()
    assert world.service.link.client is None
    world.reactor.advance(2)  # the reconnect backoff
    world.http.flush()
    assert len(world.clients) == 2 and world.gateway.calls == 2
    assert world.ids() == [A]


def test_revocation_event_ends_the_session_and_removes_the_keys(world):
    world.start()
    channel = live_channel(world, A)
    world.service.channels.answered.answered(A, e2e.parse_envelope(bytes([1, 1, 1]) + bytes(60)))
    event = topics.event_payload(topics.EVENT_REVOKED, A)
    world.service._on_message(topics.EVENTS, event)
    assert world.ids() == [B]
    assert A not in world.service.channels.channels and channel.proxy.closed
    assert len(world.service.channels.answered) == 0


@pytest.mark.logged_failures.with_args(OSError)
def test_a_revocation_whose_keys_cannot_be_removed_is_logged_and_still_ends_the_session(world, monkeypatch):
    world.start()
    channel = live_channel(world, A)
    monkeypatch.setattr(world.service.state, "remove_device", lambda device_id: defer.fail(OSError("disk full")))
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        world.service._on_message(topics.EVENTS, topics.event_payload(topics.EVENT_REVOKED, A))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert A not in world.service.channels.channels and channel.proxy.closed
    # said by the connector, naming the device: not an unhandled error the garbage collector finds later
    [failed] = [e for e in events if "log_failure" in e]
    assert failed.get("device_id") == A and failed["log_failure"].check(OSError)


def test_disconnect_event_ends_the_session_and_keeps_the_keys(world):
    world.start()
    channel = live_channel(world, A)
    world.service._on_message(topics.EVENTS, topics.event_payload(topics.EVENT_DISCONNECTED, A))
    assert channel.proxy.closed and world.ids() == [A, B]


@pytest.mark.parametrize("payload", [b"", b"not json", b"[]", b'{"event": "device_revoked"}',
                                     b'{"event": "device_revoked", "device_id": "../x"}'])
def test_unreadable_events_change_nothing(world, payload):
    world.start()
    channel = live_channel(world, A)
    world.service._on_message(topics.EVENTS, payload)
    assert not channel.proxy.closed and world.ids() == [A, B]


def test_gateway_session_lost_ends_every_channel(world):
    world.start()
    channels = [live_channel(world, A), live_channel(world, B)]
    world.clients[0].close()
    assert all(ch.proxy.closed for ch in channels) and world.service.channels.channels == {}


def test_envelopes_are_routed_by_up_topic_and_answers_go_down(world):
    world.start()
    (client,) = world.clients
    world.service._on_message(topics.up_topic(C), bytes([1, 1, 1]) + bytes(60))  # HELLO of an unknown device
    assert client.published == [(topics.down_topic(C), e2e.make_reject())]
    for topic in ("devices/+/up", "devices/" + "A" * 32 + "/up", topics.down_topic(A), "other"):
        world.service._on_message(topic, bytes([1, 1, 1]) + bytes(60))
    assert len(client.published) == 1
    assert world.service.channels._locks == {}  # pruned once the HELLO was handled


def test_observers_hear_the_device_list_events_and_a_lost_gateway(world):
    """What the pairing page keeps its device states from."""
    heard = []

    class Observer:
        def gateway_devices(self, listed):
            heard.append(("devices", sorted(d["device_id"] for d in listed)))

        def gateway_event(self, name, device_id):
            heard.append((name, device_id))

        def gateway_lost(self):
            heard.append(("lost",))

    world.service.observers.append(Observer())
    world.start()
    world.service._on_message(topics.EVENTS, json.dumps({"event": "device_connected", "device_id": A}).encode())
    world.clients[0].close()
    assert heard == [("devices", [A, B]), ("device_connected", A), ("lost",)]
