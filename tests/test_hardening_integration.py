"""The real gateway under crashes, SIGTERM, slow readers and junk on its port."""

import os
import signal
import socket

import pytest

from linchpin_common.contract import wire
from tests.support import (TIMEOUT, Gateway, Paho, RawWebSocket, RestAccounts, connect_packet, free_port,
                           gateway_with_device, raw_session, rest, rss_kib, scrape)


def test_kill_9_loses_no_answered_write(tmp_path):
    gw = Gateway(tmp_path / "gw")
    world = RestAccounts(gw.url)
    inst = world.register()
    kept_id, kept_pw = world.pair(inst)
    spent = world.add_device(inst)
    status, _, _ = rest("POST", gw.url + "/api/v1/devices/setup", {"device_setup_key": spent["device_setup_key"]})
    assert status == 200
    gone_id, gone_pw = world.pair(inst)
    world.revoke(inst, gone_id)
    os.kill(gw.proc.pid, signal.SIGKILL)  # right after the last answer
    gw.proc.wait(TIMEOUT)

    again = Gateway(tmp_path / "gw")
    try:
        assert Paho(again.port, *inst).result == "Success"
        assert Paho(again.port, kept_id, kept_pw).result == "Success"
        assert Paho(again.port, gone_id, gone_pw).result == "Bad user name or password"
        status, body, _ = rest("POST", again.url + "/api/v1/devices/setup",
                               {"device_setup_key": spent["device_setup_key"]})
        assert status == 404 and body["error"] == "invalid_setup_key"  # a used key stays used
    finally:
        again.kill()


def test_sigterm_drains_sessions_and_exits_0(tmp_path):
    gw, inst, (dev_id, dev_pw) = gateway_with_device(tmp_path)
    clients = [Paho(gw.port, *inst), Paho(gw.port, dev_id, dev_pw)]
    raw = raw_session(gw.port, dev_id, dev_pw)  # takes over the paho session of the device
    assert gw.terminate() == 0  # (terminate fails the test if SIGTERM does not stop it)
    assert 0x8 in raw.wait_closed()  # a clean WebSocket close, not a reset
    for c in clients:
        c.wait_closed()
    assert "closed 2 sessions" in gw.text() or "closed 3 sessions" in gw.text()


def test_never_reading_device_is_cut_and_memory_stays_flat(tmp_path):
    """200 MiB sent to a device that never reads: the gateway keeps at most
    its outbound limit for it, cuts it, and its memory does not follow."""
    gw, inst, (dev_id, dev_pw) = gateway_with_device(tmp_path, "--max-message-size", "1048576")
    sleeper = raw_session(gw.port, dev_id, dev_pw, f"devices/{dev_id}/down", rcvbuf=4096)  # never reads
    connector = raw_session(gw.port, *inst)
    before = rss_kib(gw.proc.pid)
    chunk = wire.encode_publish(f"devices/{dev_id}/down".encode(), b"\xab" * (256 * 1024))
    sent = 0
    peak = before
    while sent < 200 * 1024 * 1024:
        try:
            connector.send(chunk)
        except OSError:
            break
        sent += 256 * 1024
        if sent % (8 * 1024 * 1024) == 0:
            peak = max(peak, rss_kib(gw.proc.pid))
    # the connector is never cut for what its device did not read
    connector.send(wire.encode(wire.Pingreq()))
    parser = wire.Parser()
    got = []
    while wire.Pingresp() not in got:
        got += parser.feed(connector.recv_binary())
    growth_mib = (peak - before) / 1024
    gw.wait_for("stopped reading")
    assert growth_mib < 48, f"gateway grew {growth_mib:.1f} MiB while relaying {sent >> 20} MiB"
    print(f"gateway RSS growth while sending {sent >> 20} MiB to a non-reader: {growth_mib:.1f} MiB")
    sleeper.close()
    gw.kill()


def test_never_reading_connector_pushes_back_on_devices(tmp_path):
    gw, inst, (dev_id, dev_pw) = gateway_with_device(tmp_path)
    sleeper = raw_session(gw.port, *inst, "devices/+/up", rcvbuf=4096)  # a connector that never reads
    device = raw_session(gw.port, dev_id, dev_pw)
    device.sock.settimeout(3)
    before = rss_kib(gw.proc.pid)
    chunk = wire.encode_publish(f"devices/{dev_id}/up".encode(), b"\xcd" * (256 * 1024))
    sent = 0
    blocked = False
    while sent < 200 * 1024 * 1024:
        try:
            device.send(chunk)
        except socket.timeout:
            blocked = True  # TCP pushed back all the way to the device
            break
        sent += len(chunk)
    growth_mib = (rss_kib(gw.proc.pid) - before) / 1024
    assert blocked, "the gateway kept reading from the device"
    assert sent < 64 * 1024 * 1024
    assert growth_mib < 48
    assert gw.proc.poll() is None
    sleeper.close()
    gw.kill()


@pytest.mark.parametrize("junk", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),  # a TLS hello on a plain port
    b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",  # no key
    b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00",  # raw MQTT, no WebSocket
    os.urandom(2048),
])
def test_junk_on_the_port_is_closed_and_disturbs_nothing(tmp_path, junk):
    gw = Gateway(tmp_path / "gw")
    world = RestAccounts(gw.url)
    inst = world.register()
    live = Paho(gw.port, *inst)
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=TIMEOUT)
    s.sendall(junk)
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass  # the gateway answers (or not) and closes
    s.close()
    assert not live.disconnected.is_set()
    assert rest("GET", gw.url + "/healthz")[0] == 200
    gw.kill()


def test_metrics_endpoint(tmp_path):
    port = free_port()
    gw, inst, (dev_id, dev_pw) = gateway_with_device(tmp_path, "--metrics", f"tcp:{port}:interface=127.0.0.1")
    conn = Paho(gw.port, *inst)
    conn.subscribe("devices/+/up")
    dev = Paho(gw.port, dev_id, dev_pw)
    dev.publish(f"devices/{dev_id}/up", b"12345")
    conn.next_message()
    assert Paho(gw.port, dev_id, "wrong").result == "Bad user name or password"
    gw.wait_for(rf"lmgateway listening on metrics .* at 127\.0\.0\.1:{port}")
    values = scrape(f"http://127.0.0.1:{port}/metrics", "lmgateway_")
    assert values['lmgateway_sessions{role="connector"}'] == 1
    assert values['lmgateway_sessions{role="device"}'] == 1
    assert values["lmgateway_messages_relayed_total"] == 1
    assert values["lmgateway_bytes_relayed_total"] == 5
    assert values["lmgateway_auth_failures_total"] == 1
    assert "lmgateway_pbkdf2_queue_depth" in values
    assert "lmgateway_slow_consumer_disconnects_total" in values
    assert "lmgateway_rate_limited_total" in values
    gw.kill()


def test_caps_on_pending_and_total_sessions(tmp_path):
    gw = Gateway(tmp_path / "gw", "--max-pending-logins", "2", "--max-sessions", "3")
    world = RestAccounts(gw.url)
    inst = world.register()
    idle = [RawWebSocket(gw.port), RawWebSocket(gw.port)]  # open, never CONNECT
    assert [ws.status for ws in idle] == [101, 101]
    assert RawWebSocket(gw.port).status == 503  # too many awaiting CONNACK
    idle[0].send(connect_packet(*inst))
    assert wire.Parser().feed(idle[0].recv_binary()) == [wire.Connack(0)]
    third = RawWebSocket(gw.port)  # one is authenticated now: room for one more pending
    assert third.status == 101
    assert RawWebSocket(gw.port).status == 503  # but 3 sessions are open, the most allowed
    assert rest("GET", gw.url + "/healthz")[0] == 200
    gw.kill()


def test_connect_storm_gets_connack_3_at_once_and_relaying_goes_on(tmp_path):
    gw, inst, (dev_id, dev_pw) = gateway_with_device(tmp_path, "--hash-queue", "4", "--login-limit", "0")
    conn = Paho(gw.port, *inst)
    conn.subscribe("devices/+/up")
    device = Paho(gw.port, dev_id, dev_pw)
    storm = [RawWebSocket(gw.port, source=f"127.0.1.{i + 1}") for i in range(60)]  # 60 addresses
    for i, ws in enumerate(storm):
        ws.send(connect_packet(f"{i:032x}", "x" * 22))
    # established sessions keep relaying while the storm is being answered
    device.publish(f"devices/{dev_id}/up", b"during the storm")
    assert conn.next_matching(f"devices/{dev_id}/up")[1] == b"during the storm"
    codes = [wire.Parser().feed(ws.recv_binary())[0].return_code for ws in storm]
    assert set(codes) <= {3, 4}
    assert codes.count(3) >= 40  # the queue holds 4: most are told "overloaded" at once
    assert codes.count(4) >= 4
    gw.kill()
