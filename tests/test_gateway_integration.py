"""The real `twistd lmgateway` on loopback, checked with paho-mqtt and raw sockets."""

import json
import os
import stat

import pytest

from linchpin_common.contract import wire
from tests.secrets_scan import find_secrets, secrets_in_text
from tests.support import TIMEOUT, Gateway, Paho, RawWebSocket, RestAccounts, connect_packet, raw_session, rest


@pytest.fixture
def gateway(tmp_path):
    gw = Gateway(tmp_path / "gw")
    yield gw
    gw.kill()


@pytest.fixture
def world(gateway):
    return RestAccounts(gateway.url)


def test_relay_both_ways_status_and_events(gateway, world, tmp_path):
    inst = world.register()
    dev_id, dev_pw = world.pair(inst)

    device = Paho(gateway.port, dev_id, dev_pw)
    assert device.result == "Success"
    assert device.subscribe(f"devices/{dev_id}/down", "$gateway/status") == [1, 1]
    assert device.next_matching("$gateway/status")[1] == b'{"connector": "offline"}'

    conn = Paho(gateway.port, *inst)
    assert conn.subscribe("devices/+/up", "$gateway/events", qos=0) == [0, 0]
    topic, payload, qos, retain = device.next_matching("$gateway/status")
    assert json.loads(payload) == {"connector": "online"} and qos == 0 and not retain

    every_byte = bytes(range(256)) * 40
    device.publish(f"devices/{dev_id}/up", every_byte, qos=1)
    assert conn.next_matching(f"devices/{dev_id}/up")[1] == every_byte
    conn.publish(f"devices/{dev_id}/down", every_byte[::-1], qos=1)
    topic, payload, qos, retain = device.next_matching(f"devices/{dev_id}/down")
    assert payload == every_byte[::-1] and qos == 1 and not retain

    # events: a second session of the device takes over the first
    device2 = Paho(gateway.port, dev_id, dev_pw)
    device.wait_closed()
    events = []
    while len(events) < 2:
        events.append(json.loads(conn.next_matching("$gateway/events")[1]))
    assert events == [{"event": "device_disconnected", "device_id": dev_id},
                      {"event": "device_connected", "device_id": dev_id}]
    device2.subscribe("$gateway/status")
    assert json.loads(device2.next_matching("$gateway/status")[1]) == {"connector": "online"}

    # the connector leaving flips the device to offline
    conn.close()
    assert json.loads(device2.next_matching("$gateway/status")[1]) == {"connector": "offline"}
    device2.close()


def test_refused_subscriptions_and_foreign_publishes(gateway, world):
    inst, other = world.register(), world.register()
    dev_id, dev_pw = world.pair(inst)
    other_dev, other_pw = world.pair(other)

    conn = Paho(gateway.port, *inst)
    assert conn.subscribe("devices/+/up", "#", f"devices/{dev_id}/down", "$gateway/status") == [1, 0x80, 0x80, 0x80]
    victim = Paho(gateway.port, other_dev, other_pw)
    assert victim.subscribe(f"devices/{other_dev}/down") == [1]
    device = Paho(gateway.port, dev_id, dev_pw)
    assert device.subscribe(f"devices/{other_dev}/down", "devices/+/up", "$gateway/events") == [0x80] * 3

    # a connector's publish to another instance's device: dropped, PUBACKed, not closed
    conn.publish(f"devices/{other_dev}/down", b"not for you", qos=1)
    conn.publish(f"devices/{dev_id}/down", b"still alive", qos=1)
    assert not conn.disconnected.is_set()
    assert victim.messages.empty()

    # a device's publish anywhere but its own up topic: closed
    device.client.publish(f"devices/{other_dev}/up", b"x", qos=0)
    device.wait_closed()
    victim.close()
    conn.close()


def test_connack_4_cases(gateway, world):
    inst = world.register()
    dev_id, dev_pw = world.pair(inst)
    pending = world.add_device(inst)
    assert Paho(gateway.port, dev_id, "wrong").result == "Bad user name or password"
    assert Paho(gateway.port, "f" * 32, dev_pw).result == "Bad user name or password"
    assert Paho(gateway.port, pending["device_id"], pending["device_setup_key"]).result == "Bad user name or password"
    assert Paho(gateway.port, inst[0], "wrong").result == "Bad user name or password"

    live = Paho(gateway.port, dev_id, dev_pw)
    assert live.result == "Success"
    world.revoke(inst, dev_id)
    live.wait_closed()
    assert Paho(gateway.port, dev_id, dev_pw).result == "Bad user name or password"


def test_restart_keeps_credentials(tmp_path):
    gw = Gateway(tmp_path / "gw")
    world = RestAccounts(gw.url)
    inst = world.register()
    dev_id, dev_pw = world.pair(inst)
    pending = world.add_device(inst)
    assert gw.terminate() == 0
    assert "lmgateway stopped" in gw.text()

    gw2 = Gateway(tmp_path / "gw")
    try:
        assert Paho(gw2.port, *inst).result == "Success"
        assert Paho(gw2.port, dev_id, dev_pw).result == "Success"
        status, body, _ = rest("POST", gw2.url + "/api/v1/devices/setup",
                               {"device_setup_key": pending["device_setup_key"]})
        assert status == 200
    finally:
        gw2.kill()


def test_packets_split_across_websocket_messages(gateway, world):
    inst = world.register()
    dev_id, dev_pw = world.pair(inst)
    conn = Paho(gateway.port, *inst)
    conn.subscribe("devices/+/up")

    ws = RawWebSocket(gateway.port)
    assert ws.status == 101 and "Sec-WebSocket-Protocol: mqtt" in ws.headers
    stream = connect_packet(dev_id, dev_pw)
    payload = os.urandom(3000)
    stream += wire.encode(wire.Publish(f"devices/{dev_id}/up", payload, qos=1, packet_id=7))
    stream += wire.encode(wire.Pingreq())
    for i in range(0, len(stream), 7):  # 7-byte WebSocket messages
        ws.send(stream[i:i + 7])
    parser = wire.Parser()
    got = []
    while len(got) < 3:
        got += parser.feed(ws.recv_binary())
    assert got == [wire.Connack(0), wire.Puback(7), wire.Pingresp()]
    assert conn.next_matching(f"devices/{dev_id}/up")[1] == payload
    # several packets in one message work too
    ws.send(wire.encode(wire.Pingreq()) * 3)
    got = []
    while len(got) < 3:
        got += parser.feed(ws.recv_binary())
    assert got == [wire.Pingresp()] * 3
    ws.close()


def test_2mib_publish_rejected(gateway, world):
    inst = world.register()
    dev_id, dev_pw = world.pair(inst)
    conn = Paho(gateway.port, *inst)
    conn.subscribe("devices/+/up")
    device = Paho(gateway.port, dev_id, dev_pw)
    device.client.publish(f"devices/{dev_id}/up", b"x" * (2 * 1024 * 1024), qos=0)
    device.wait_closed()
    assert conn.messages.empty()
    assert not conn.disconnected.is_set()


def test_oversize_header_closes_before_body(gateway, world):
    inst = world.register()
    ws = raw_session(gateway.port, *inst)
    ws.send(b"\x30" + wire.encode_remaining_length(2 * 1024 * 1024))  # header only
    assert 0x8 in ws.wait_closed()


def test_bad_websocket_requests(gateway):
    no_proto = RawWebSocket(gateway.port, protocol=None)
    assert no_proto.status == 400
    wrong = RawWebSocket(gateway.port, protocol="chat")
    assert wrong.status == 400
    # text frames are refused
    ws = RawWebSocket(gateway.port)
    ws.send(b"hello", opcode=0x1)
    assert 0x8 in ws.wait_closed()
    # the gateway is still fine
    assert rest("GET", gateway.url + "/healthz")[0] == 200


def test_data_dir_modes_and_no_secrets_on_disk(gateway, world, tmp_path):
    inst = world.register()
    dev = world.add_device(inst)
    status, creds, _ = rest("POST", gateway.url + "/api/v1/devices/setup", {"device_setup_key": dev["device_setup_key"]})
    pending = world.add_device(inst)
    device = Paho(gateway.port, dev["device_id"], creds["device_password"])
    device.subscribe(f"devices/{dev['device_id']}/down")
    conn = Paho(gateway.port, *inst)
    conn.subscribe("devices/+/up")
    device.publish(f"devices/{dev['device_id']}/up", b"PAYLOAD-MARKER-0123456789")
    conn.next_message()
    assert gateway.terminate() == 0

    data_dir = tmp_path / "gw"
    assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
    for name in os.listdir(data_dir):
        assert stat.S_IMODE(os.stat(data_dir / name).st_mode) == 0o600, name
    secrets = [inst[1], dev["device_setup_key"], creds["device_password"], pending["device_setup_key"],
               "PAYLOAD-MARKER-0123456789"]
    assert find_secrets(data_dir, secrets) == []
    # nor in the gateway's own log
    assert secrets_in_text(gateway.text(), secrets) == []


@pytest.mark.parametrize("ending", ["refused", "gateway stopped"])
def test_the_tests_paho_client_never_logs_in_again_by_itself(tmp_path, ending):
    """A refused or closed paho session stays closed: a client that logged in
    again by itself would spend login budgets and take sessions over in the
    tests that follow, from a thread nobody stops."""
    gateway = Gateway(tmp_path / "gw")
    if ending == "refused":
        client = Paho(gateway.port, "f" * 32, "wrong")
        assert client.result == "Bad user name or password"
    else:
        inst = RestAccounts(gateway.url).register()
        client = Paho(gateway.port, *inst)
        assert client.result == "Success"
    gateway.kill()
    thread = client.client._thread  # paho's network thread (no public handle); None once it has ended
    if thread is not None:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "paho keeps logging in again"
