"""Both WebSocket adapters in memory: the MQTT client of the connector and the
device (MQTTClientProtocol) against the real gateway (its HTTP site with the
MQTT resource, MQTTServerProtocol, router, store), pumped by twisted.test.iosim.
No socket, no thread, no sleep."""

from __future__ import annotations

import pytest
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.test import iosim

from linchpin_common import mqtt_client
from linchpin_common.contract import topics
from linchpin_common.gateway_client import GatewayAPI

from tests.doubles import result as _result


def result(coroutine):
    """The result of a GatewayAPI call, which completes inline here."""
    return _result(defer.ensureDeferred(coroutine))

BASE = "http://gw.test"


class Net:
    """Each ``connect`` opens one in-memory connection to the gateway's site."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.reactor = gateway.reactor
        self.pumps: list[iosim.IOPump] = []

    def open(self, username: str, password: str, on_message, client_id: str = "c") -> defer.Deferred:
        """A new session (the MQTT connect function's work): Deferred[MQTTClient]
        once the pumps have carried the CONNACK."""
        factory = mqtt_client.client_factory(self.reactor, "ws://gw.test/mqtt", username, password,
                                             on_message=on_message, keep_alive=60, client_id=client_id)
        server_address = IPv4Address("TCP", "127.0.0.1", 443)
        client_address = IPv4Address("TCP", "127.0.0.1", 40000 + len(self.pumps))
        _, _, pump = iosim.connectedServerAndClient(
            lambda: self.gateway.site.buildProtocol(client_address),
            lambda: factory.buildProtocol(server_address), greet=False, clock=self.reactor)
        self.pumps.append(pump)
        return factory.session_ready

    def connect(self, username: str, password: str):
        messages = []
        ready = []
        self.open(username, password, lambda t, p: messages.append((t, p))).addBoth(ready.append)
        self.flush()
        assert ready, "no CONNACK"
        client = ready[0]
        if not isinstance(client, mqtt_client.MQTTClient):
            client.raiseException()
        client.messages = messages
        return client

    def flush(self):
        for _ in range(20):
            moved = any([pump.pump() for pump in self.pumps])
            self.reactor.advance(0)
            if not moved:
                return


@pytest.fixture
def world(make_gateway):
    gateway = make_gateway()
    net = Net(gateway)
    api = GatewayAPI(StubTreq(gateway.site.resource), BASE)
    instance = result(api.register())
    inst_api = GatewayAPI(StubTreq(gateway.site.resource), BASE, instance["instance_id"], instance["instance_password"])
    added = result(inst_api.add_device())
    creds = result(api.setup(added["device_setup_key"]))
    return net, instance, inst_api, creds


def subscribe(net, client, filters):
    codes = []
    client.subscribe([(f, 0) for f in filters]).addCallback(codes.append)
    net.flush()
    return codes[0]


def test_connector_and_device_relay_through_both_adapters(world):
    net, instance, inst_api, creds = world
    device_id = creds["device_id"]
    connector = net.connect(instance["instance_id"], instance["instance_password"])
    device = net.connect(device_id, creds["device_password"])
    assert subscribe(net, device, topics.device_subscriptions(device_id)) == [0, 0]
    assert device.messages == [(topics.STATUS, topics.status_payload(False))]
    assert subscribe(net, connector, topics.CONNECTOR_SUBSCRIPTIONS) == [0, 0]
    assert device.messages[-1] == (topics.STATUS, topics.status_payload(True))
    # up: same topic and bytes at the connector; down: to the device
    device.publish(topics.up_topic(device_id), b"\x01\x03 envelope up")
    net.flush()
    assert (topics.up_topic(device_id), b"\x01\x03 envelope up") in connector.messages
    connector.publish(topics.down_topic(device_id), b"\x01\x03 envelope down")
    net.flush()
    assert device.messages[-1] == (topics.down_topic(device_id), b"\x01\x03 envelope down")
    # a 300 KiB payload (a DATA with a full body part) crosses both adapters whole
    big = bytes(range(256)) * 1200
    connector.publish(topics.down_topic(device_id), big)
    net.flush()
    assert device.messages[-1] == (topics.down_topic(device_id), big)


def test_a_device_may_not_subscribe_elsewhere(world):
    net, _, _, creds = world
    device = net.connect(creds["device_id"], creds["device_password"])
    assert subscribe(net, device, [topics.UP_FILTER]) == [topics.SUBACK_FAILURE]


def test_revocation_closes_the_device_session_and_tells_the_connector(world):
    net, instance, inst_api, creds = world
    device_id = creds["device_id"]
    connector = net.connect(instance["instance_id"], instance["instance_password"])
    subscribe(net, connector, topics.CONNECTOR_SUBSCRIPTIONS)
    device = net.connect(device_id, creds["device_password"])
    closed = []
    device.closed.addCallback(closed.append)
    net.flush()
    result(inst_api.revoke(device_id))
    net.flush()
    assert closed and not device.is_open
    events = [topics.parse_event(p) for t, p in connector.messages if t == topics.EVENTS]
    assert (topics.EVENT_REVOKED, device_id) in events
    with pytest.raises(mqtt_client.ConnectionRefused):
        net.connect(device_id, creds["device_password"])


def test_wrong_password_is_refused_with_connack_4(world):
    net, _, _, creds = world
    with pytest.raises(mqtt_client.ConnectionRefused) as info:
        net.connect(creds["device_id"], "not the password")
    assert info.value.code == 4


def test_the_gateway_reads_client_frames_with_the_lean_reader(world):
    from linchpin_common.contract import wire
    from linchpin_common.wsframes import FrameReader

    net, instance, inst_api, creds = world
    connector = net.connect(instance["instance_id"], instance["instance_password"])
    assert subscribe(net, connector, topics.CONNECTOR_SUBSCRIPTIONS) == [0, 0]
    (server,) = net.gateway.ws_factory.live
    assert isinstance(server._frames, FrameReader)
    device = net.connect(creds["device_id"], creds["device_password"])
    assert subscribe(net, device, topics.device_subscriptions(creds["device_id"])) == [0, 0]
    # A ping between the fragments of a PUBLISH: answered, and the PUBLISH relayed.
    device_ws = net.pumps[-1].client
    pongs = []
    device_ws.onPong = pongs.append
    packet = wire.encode(wire.Publish(topics.up_topic(creds["device_id"]), b"split", 0))
    device_ws.sendFrame(opcode=2, payload=packet[:3], fin=False)
    device_ws.sendPing(b"between")
    device_ws.sendFrame(opcode=0, payload=packet[3:], fin=True)
    net.flush()
    assert pongs == [b"between"]
    assert connector.messages[-1] == (topics.up_topic(creds["device_id"]), b"split")
