"""Issue 10's attacks against the real ``twistd lmgateway`` while a real
connector and device keep relaying.

The attackers play other client addresses (anything in 127/8 can be bound on
loopback); the connector and the device use 127.0.0.1.  After each attack the
device fetches a page through the gateway and the connector, and a fresh
device logs in: the attack must have cost them nothing but some CPU.
"""

from __future__ import annotations

import socket
import threading
import time

from linchpin_common.contract import wire
from tests.support import (TIMEOUT, Connector, Gateway, Paho, RawWebSocket, SampleApp, cli, connect_packet,
                           free_port, rest, rss_kib, scrape)


class Relay:
    """Gateway, sample app, a registered connector and a paired device."""

    def __init__(self, tmp_path, *gateway_args):
        self.metrics = free_port()
        self.gateway = Gateway(tmp_path / "gw", "--metrics", f"tcp:{self.metrics}:interface=127.0.0.1",
                               *gateway_args)
        self.app = SampleApp()
        connector_dir = tmp_path / "connector"
        cli("lmconnector", "--data-dir", connector_dir, "register", "--gateway", self.gateway.url)
        self.connector = Connector(connector_dir, self.app.url)
        self.connector.wait_online()
        self.connector_dir = connector_dir
        self.state = tmp_path / "phone.json"
        uri = cli("lmconnector", "--data-dir", connector_dir, "device", "add", "alice").stdout.decode().strip()
        cli("lmdevice", "--state", self.state, "pair", "-", stdin=(uri + "\n").encode())
        self.port = self.gateway.port

    def fetch(self) -> bytes:
        """A page through gateway and connector, as the paired user."""
        done = cli("lmdevice", "--state", self.state, "request", "-i", "/api/whoami")
        assert done.stdout.startswith(b"HTTP/1.1 200"), done.stdout[:200]
        return done.stdout

    def value(self, name: str) -> float:
        return scrape(f"http://127.0.0.1:{self.metrics}/metrics", "lmgateway_").get(name, 0.0)

    def stop(self):
        for proc in (self.connector, self.app, self.gateway):
            proc.kill()


def connack(ws: RawWebSocket) -> int | None:
    try:
        packets = wire.Parser().feed(ws.recv_binary())
    except (ConnectionError, OSError, AssertionError):
        return None
    return packets[0].return_code


def wrong_login(port: int, source: str, i: int, out: list) -> None:
    try:
        ws = RawWebSocket(port, source=source)
    except OSError:
        out.append("reset")  # over the address's connection cap
        return
    if ws.status != 101:
        out.append(-ws.status)
        ws.close()
        return
    ws.send(connect_packet(f"{i:032x}", "wrong-password-xx"))
    out.append(connack(ws))
    ws.close()


def closed_by_peer(sock: socket.socket) -> bool:
    """Blocks (up to TIMEOUT) until the gateway closes ``sock``."""
    sock.settimeout(TIMEOUT)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        return False
    return True


def test_attacks_leave_a_real_connector_and_device_relaying(tmp_path):
    relay = Relay(tmp_path, "--request-deadline", "3", "--connections-per-address", "40",
                  "--pending-logins-per-address", "8")
    try:
        assert b"alice" in relay.fetch()
        port = relay.port

        # 1. a burst of 200 parallel wrong logins from one address
        before = relay.value("lmgateway_auth_failures_total")
        started = time.monotonic()
        codes: list = []
        threads = [threading.Thread(target=wrong_login, args=(port, "127.0.0.2", i, codes)) for i in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        runs = relay.value("lmgateway_auth_failures_total") - before
        refilled = (time.monotonic() - started) / 3  # the budget refills 20 a minute
        assert len(codes) == 200 and set(codes) <= {None, 3, 4, 5, -503, "reset"}
        assert runs <= 20 + refilled + 1, f"{runs} PBKDF2 runs for one address's failures"  # before: about 200
        assert b"alice" in relay.fetch()

        # 2. slow-loris: headers that never end, from one address
        loris = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=("127.0.0.3", 0))
                 for _ in range(30)]
        for s in loris:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert b"alice" in relay.fetch()
        assert all(closed_by_peer(s) for s in loris)  # the deadline, not the idle timeout, closed them
        for s in loris:
            s.close()

        # 3. idle WebSockets that never send CONNECT, and too many connections, from one address
        idle = [RawWebSocket(port, source="127.0.0.4") for _ in range(12)]
        assert [ws.status for ws in idle].count(101) == 8  # the rest: 503
        crowd = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=("127.0.0.5", 0))
                 for _ in range(45)]
        for s in crowd:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answered = 0
        for s in crowd:
            s.settimeout(TIMEOUT)
            try:
                answered += s.recv(12).startswith(b"HTTP/1.1 200")
            except OSError:
                pass
        assert answered == 40
        assert b"alice" in relay.fetch()
        fresh = cli("lmconnector", "--data-dir", relay.connector_dir, "device", "add", "bob").stdout.decode()
        assert fresh.startswith("linchpin-mobile://")
        for ws in idle:
            ws.close()
        for s in crowd:
            s.close()

        # 4. data pipelined behind CONNECT while its password is checked
        rss_before = rss_kib(relay.gateway.proc.pid)
        junk = wire.encode_publish(b"devices/" + b"0" * 32 + b"/up", b"\xee" * (1024 * 1024 - 64))
        heavy = []
        for i in range(6):
            ws = RawWebSocket(port, source=f"127.0.2.{i + 1}")
            ws.send(connect_packet(f"{i:032x}", "wrong-password-xx"))
            ws.sock.settimeout(2)
            try:
                for _ in range(16):
                    ws.send(junk)
            except OSError:
                pass  # the gateway stopped reading: the point
            heavy.append(ws)
        growth_mib = (rss_kib(relay.gateway.proc.pid) - rss_before) / 1024
        assert growth_mib < 32, f"{growth_mib:.1f} MiB held for 6 pending logins"  # before: 6 x 32 MiB
        for ws in heavy:
            ws.close()
        assert b"alice" in relay.fetch()

        # the gateway's REST side for the connector's own calls, after everything
        assert cli("lmconnector", "--data-dir", relay.connector_dir, "device", "list").stdout
        status, _, _ = rest("GET", relay.gateway.url + "/healthz")
        assert status == 200
        assert relay.connector.proc.poll() is None and relay.gateway.proc.poll() is None
    finally:
        relay.stop()


def test_a_nat_neighbours_failures_do_not_lock_out_the_connector(tmp_path):
    """Item 4 on the real process: the connector's address is also used for
    wrong logins until its budget is spent; the connector reconnects anyway."""
    relay = Relay(tmp_path)
    try:
        codes = []
        for i in range(30):  # same address as the connector (127.0.0.1)
            wrong_login(relay.port, "127.0.0.1", i, codes)
        assert codes[-1] == 5
        stranger = RawWebSocket(relay.port)  # a principal never seen here is refused
        stranger.send(connect_packet("f" * 32, "x" * 22))
        assert connack(stranger) == 5
        # the connector, cut and restarted, logs in again from the same address
        relay.connector.kill()
        relay.connector = Connector(relay.connector_dir, relay.app.url)
        relay.connector.wait_online()
        assert b"alice" in relay.fetch()
        paho = Paho(relay.port, "e" * 32, "wrong")
        assert paho.result != "Success"
    finally:
        relay.stop()
