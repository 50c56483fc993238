"""Helpers for loopback integration tests: real processes, independent clients.

Nothing here sleeps to wait: every wait blocks on an event (a log line, a
message, a closed socket) with a generous timeout that only a failure hits.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import sys
import urllib.error
import urllib.request

from linchpin_common.procs import Child, rss_kib  # noqa: F401  (tests import them from here)
from linchpin_common.rawws import client_frame
from linchpin_common.testing_services import Paho, free_port  # noqa: F401  (tests import them from here)
from tests.logcheck import no_traceback

TIMEOUT = 30
BIN = os.path.dirname(sys.executable)


class Process(Child):
    """A child process whose output lines are read on a thread, so a test can
    wait for a line without polling (:class:`linchpin_common.procs.Child`).
    Every one still running when its test ends is killed (see conftest.py),
    also when the test failed; a traceback in its output fails the test
    during which it was printed (tests/logcheck.py)."""

    started: list[Process] = []  # those started during the current test (conftest.py empties it)
    fixtures: set[Process] = set()  # started during a test for a wider-scoped fixture, which stops them

    def __init__(self, argv, env=None, cwd=None, stdin=None):
        super().__init__(argv, env=env, cwd=cwd, stdin=stdin)
        Process.started.append(self)

    def for_fixture(self) -> Process:
        """This process belongs to a wider-scoped fixture (one started again
        by a test): the end of the test leaves it running."""
        Process.fixtures.add(self)
        return self


class Gateway(Process):
    """``twistd lmgateway`` on loopback: on a free port, or on ``port`` (a
    gateway started again where its devices expect it)."""

    def __init__(self, data_dir, *extra, port=0):
        super().__init__([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "lmgateway",
                          "--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", str(data_dir), *extra])
        m = self.wait_for(r"lmgateway listening on .* at 127\.0\.0\.1:(\d+)")
        self.port = int(m.group(1))
        self.url = f"http://127.0.0.1:{self.port}"


# -- REST --------------------------------------------------------------------


def rest(method, url, body=None, auth=None, headers=None):
    """(status, parsed JSON or None, headers) of one HTTP call."""
    hdrs = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    if auth is not None:
        hdrs["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None), resp.headers
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, (json.loads(raw) if raw else None), e.headers


class RestAccounts:
    """Registration and pairing through the REST API of a gateway."""

    def __init__(self, url):
        self.url = url

    def register(self):
        status, body, _ = rest("POST", self.url + "/api/v1/instances", {})
        assert status == 201, body
        return body["instance_id"], body["instance_password"]

    def add_device(self, inst):
        status, body, _ = rest("POST", self.url + "/api/v1/devices", {}, auth=inst)
        assert status == 201, body
        return body

    def pair(self, inst):
        dev = self.add_device(inst)
        status, body, _ = rest("POST", self.url + "/api/v1/devices/setup",
                               {"device_setup_key": dev["device_setup_key"]})
        assert status == 200, body
        return body["device_id"], body["device_password"]

    def revoke(self, inst, device_id):
        status, body, _ = rest("DELETE", f"{self.url}/api/v1/devices/{device_id}", auth=inst)
        assert status == 204, body


# -- a raw WebSocket client, for what no MQTT library will send -----------------


class RawWebSocket:
    """Minimal RFC 6455 client: masked binary frames, blocking reads."""

    def __init__(self, port, path="/mqtt", protocol="mqtt", source="127.0.0.1"):
        """``source``: the loopback address to connect from (any of 127/8),
        so one test can play many client addresses."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if protocol:
            lines.append(f"Sec-WebSocket-Protocol: {protocol}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1]) if head else 0
        self.headers = head.decode("latin-1")

    def send(self, payload: bytes, opcode=0x2) -> None:
        self.sock.sendall(client_frame(payload, os.urandom(4), opcode))

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def recv(self):
        """(opcode, payload) of the next frame; ConnectionError once closed."""
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._read(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._read(8))
        return b0 & 0x0F, self._read(n)

    def recv_binary(self):
        opcode, payload = self.recv()
        assert opcode == 0x2, (opcode, payload)
        return payload

    def wait_closed(self):
        """Read until the server closes; returns the opcodes seen."""
        seen = []
        try:
            while True:
                opcode, _ = self.recv()
                seen.append(opcode)
                if opcode == 0x8:
                    self.sock.close()
                    return seen
        except (ConnectionError, OSError):
            return seen

    def close(self):
        self.sock.close()


# -- the whole system ------------------------------------------------------------------


class SampleApp(Process):
    def __init__(self):
        super().__init__([sys.executable, "-m", "linchpin_connector.sample_app", "--listen",
                          "tcp:0:interface=127.0.0.1"])
        port = int(self.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        self.url = f"http://127.0.0.1:{port}"


class Connector(Process):
    """``twistd lmconnector``; ``wait_online()`` blocks until it has a gateway session."""

    def __init__(self, data_dir, backend_url, *extra):
        super().__init__([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "lmconnector", "--data-dir",
                          str(data_dir), "--backend", backend_url, *extra])

    def wait_online(self):
        return self.wait_for(r"connected to the gateway")


def cli(name, *args, stdin=None, check=True, timeout=TIMEOUT, env=None):
    """Run ``lmconnector``/``lmdevice``; returns the CompletedProcess (bytes stdout)."""
    done = subprocess.run([os.path.join(BIN, name), *map(str, args)], input=stdin, capture_output=True,
                          timeout=timeout, env=env)
    no_traceback(f"{name} {args}", done.stderr)
    if check and done.returncode != 0:
        raise AssertionError(f"{name} {args} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
    return done


class System:
    """Gateway, sample app and a registered connector, all real processes."""

    def __init__(self, tmp_path, *connector_args):
        self.tmp_path = tmp_path
        self.gateway = Gateway(tmp_path / "gw")
        self.app = SampleApp()
        self.connector_dir = tmp_path / "connector"
        cli("lmconnector", "--data-dir", self.connector_dir, "register", "--gateway", self.gateway.url)
        self.connector_args = connector_args
        self.connector = None
        self.start_connector()

    def start_connector(self):
        self.connector = Connector(self.connector_dir, self.app.url, *self.connector_args)
        self.connector.wait_online()

    def add_device(self, user="alice") -> str:
        """The pairing URI for a new device of ``user``."""
        return cli("lmconnector", "--data-dir", self.connector_dir, "device", "add", user).stdout.decode().strip()

    def pair(self, user="alice", name="phone") -> str:
        state = self.tmp_path / f"{name}.json"
        cli("lmdevice", "--state", state, "pair", "-", stdin=(self.add_device(user) + "\n").encode())
        return str(state)

    def stop(self):
        for proc in (self.connector, self.app, self.gateway):
            if proc is not None:
                proc.kill()


def connect_packet(username: str, password: str, keep_alive: int = 60) -> bytes:
    from linchpin_common.contract import wire

    return wire.encode(wire.Connect(client_id="raw", username=username, password=password.encode(),
                                    keep_alive=keep_alive, clean_session=True))


def raw_session(port, username, password, *subscriptions, rcvbuf=None, keep_alive=300) -> RawWebSocket:
    """A raw WebSocket MQTT session, accepted (and subscribed) before it is returned."""
    from linchpin_common.contract import wire

    ws = RawWebSocket(port)
    if rcvbuf is not None:
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    ws.send(connect_packet(username, password, keep_alive))
    if subscriptions:
        ws.send(wire.encode(wire.Subscribe(1, tuple((s, 0) for s in subscriptions))))
    ws.parser = wire.Parser()
    got = []
    while len(got) < (2 if subscriptions else 1):
        got += ws.parser.feed(ws.recv_binary())
    assert got[0] == wire.Connack(0), got
    return ws


def gateway_with_device(tmp_path, *extra):
    """A fresh gateway with one instance and one paired device:
    ``(gateway, instance credentials, (device_id, device_password))``."""
    gw = Gateway(tmp_path / "gw", *extra)
    world = RestAccounts(gw.url)
    inst = world.register()
    return gw, inst, world.pair(inst)


def scrape(url: str, prefix: str) -> dict[str, float]:
    """Prometheus text from ``url`` as {name with labels: value}, for names starting with ``prefix``."""
    text = urllib.request.urlopen(url, timeout=TIMEOUT).read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values
