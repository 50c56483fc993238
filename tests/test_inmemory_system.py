"""The whole system in memory: a real Device, the real gateway and the real
ConnectorService proxying to the sample app, every connection an iosim pump
or a StubTreq, the clock a MemoryReactorClock. What the loopback tests prove
with processes, proved here in well under a second of pumping."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from treq.testing import StubTreq
from twisted.internet import defer

from linchpin_common.contract import e2e
from linchpin_common.gateway_client import GatewayAPI
from linchpin_common.workers import InlineWorker
from linchpin_connector.connector import ConnectorService
from linchpin_connector.device import Device, DeviceState, RequestRefused, SessionLost
from linchpin_connector.device.handshake import Phase
from linchpin_connector.sample_app import block, make_site
from linchpin_connector.state import ConnectorState

from tests.test_inmemory_relay import BASE, Net, result


class System:
    def __init__(self, gateway, tmp_path):
        self.gateway = gateway
        self.reactor = gateway.reactor
        self.net = Net(gateway)
        self.tmp_path = tmp_path
        self.gateway_http = StubTreq(gateway.site.resource)
        self.backend = StubTreq(make_site(clock=self.reactor).resource)
        self.backends: dict[str, StubTreq] = {}  # more backends, each behind a connector of its own
        api = GatewayAPI(self.gateway_http, BASE)
        self.instance = result(api.register())
        self.static = X25519PrivateKey.generate()
        self.connector_dir = str(tmp_path / "connector")
        state = ConnectorState(self.connector_dir)
        state.save_registration(BASE, self.instance["instance_id"], self.instance["instance_password"],
                                self.static.private_bytes(serialization.Encoding.Raw,
                                                          serialization.PrivateFormat.Raw,
                                                          serialization.NoEncryption()))
        self.cstate = state
        self.connector = ConnectorService(self.reactor, self.connector_dir, "http://app.test",
                                          allow_paths=["/api", "/download", "/upload"],
                                          connect=self.connect, gateway_http=self.gateway_http,
                                          worker=InlineWorker(), backend_http=self.backend)
        self.connector.startService()
        self.pump()
        assert self.connector.link.client is not None and self.connector.link.client.is_open

    def connect(self, reactor, url, username, password, *, on_message, **kw):
        """The MQTT connect function, over an in-memory connection to the gateway."""
        return self.net.open(username, password, on_message, kw.get("client_id", ""))

    def pump(self, until: defer.Deferred | None = None, rounds: int = 10000):
        for _ in range(rounds):
            moved = any([pump.pump() for pump in self.net.pumps])
            self.gateway_http.flush()
            self.backend.flush()
            for backend in self.backends.values():
                backend.flush()
            self.reactor.advance(0)
            if until is not None and until.called:
                return
            if until is None and not moved:
                return
        raise AssertionError("the system never settled")

    def add_device(self, user="alice") -> DeviceState:
        """``lmconnector device add`` and ``lmdevice pair``, minus the QR code."""
        inst = GatewayAPI(self.gateway_http, BASE, self.instance["instance_id"], self.instance["instance_password"])
        added = result(inst.add_device())
        secret = bytes(range(32))
        self.cstate.add_device(added["device_id"], user, secret)
        creds = result(GatewayAPI(self.gateway_http, BASE).setup(added["device_setup_key"]))
        state = DeviceState(path=str(self.tmp_path / f"{added['device_id']}.json"), gateway_url=BASE,
                            device_id=creds["device_id"], device_password=creds["device_password"],
                            connector_key=e2e.b64u_encode(self.static.public_key().public_bytes_raw()),
                            setup_secret=e2e.b64u_encode(secret), insecure=True)
        state.save()
        return state

    def device(self, state: DeviceState) -> Device:
        return Device(self.reactor, state, connect=self.connect, worker=InlineWorker())

    def stop(self):
        self.connector.stopService()
        self.pump()
        self.cstate.close()


@pytest.fixture
def system(make_gateway, tmp_path):
    s = System(make_gateway(), tmp_path)
    yield s
    s.stop()


def run(system, coroutine):
    d = defer.ensureDeferred(coroutine)
    system.pump(until=d)
    out = []
    d.addBoth(out.append)
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def test_pair_request_and_stream_a_download(system):
    state = system.add_device("alice")
    device = system.device(state)
    run(system, device.open())
    run(system, device.handshake())
    assert device.phase is Phase.LIVE
    system.pump()
    assert system.cstate.device(state.device_id).device_secret is not None  # the confirm proved the key
    response = run(system, device.request("GET", "/api/whoami?x=1"))
    body = run(system, response.content())
    assert response.status == 200 and json.loads(body)["user"] == "alice"
    size = 3 * 1024 * 1024 + 5  # over the 1 MiB window three times: acks must flow
    response = run(system, device.request("GET", f"/download?size={size}"))
    digest, got = hashlib.sha256(), [0]

    def part(data):
        digest.update(data)
        got[0] += len(data)

    run(system, response.deliver(part))
    expected = hashlib.sha256()
    index = 0
    while index * len(block(0)) < size:
        expected.update(block(index)[: size - index * len(block(0))])
        index += 1
    assert got[0] == size and digest.hexdigest() == expected.hexdigest()


def test_upload_and_forbidden_path(system):
    device = system.device(system.add_device("bob"))
    data = bytes(range(256)) * 8192  # 2 MiB, streamed under the credit window
    response = run(system, device.request("POST", "/upload", [("Content-Type", "application/octet-stream")], data))
    assert response.status == 200
    assert hashlib.sha256(data).hexdigest().encode() in run(system, response.content())
    with pytest.raises(RequestRefused, match="forbidden"):
        run(system, device.request("GET", "/notes"))


class ThreadWorker:
    """Stands for the device's thread pool: says whether a job is running on it."""

    def __init__(self):
        self.inside = False

    def run(self, fn, *args):
        self.inside = True
        try:
            return defer.maybeDeferred(fn, *args)
        finally:
            self.inside = False


class PipeLikeFile:
    """A binary file whose reads block (a slow disk, a pipe): each returns at
    most 100 000 bytes, whatever was asked, and must not run on the reactor thread."""

    def __init__(self, data: bytes, worker: ThreadWorker):
        self.data, self.at, self.worker = data, 0, worker

    def read(self, n: int) -> bytes:
        assert self.worker.inside, "a file read on the reactor thread"
        part = self.data[self.at:self.at + min(n, 100_000)]
        self.at += len(part)
        return part


def test_a_file_body_is_read_off_the_reactor_thread_to_its_end(system):
    worker = ThreadWorker()
    device = Device(system.reactor, system.add_device("bob"), connect=system.connect, worker=worker)
    data = os.urandom(3 * 1024 * 1024 + 3)  # three windows, and short reads all along
    response = run(system, device.request("POST", "/upload", [], PipeLikeFile(data, worker)))
    assert response.status == 200
    assert json.loads(run(system, response.content())) == {"bytes": len(data),
                                                            "sha256": hashlib.sha256(data).hexdigest()}


def test_requests_at_once_on_a_closed_device_open_one_connection(system):
    state = system.add_device("dora")
    opened = []

    def connect(reactor, url, username, password, **kw):
        opened.append(username)
        return system.connect(reactor, url, username, password, **kw)

    device = Device(system.reactor, state, connect=connect, worker=InlineWorker())
    both = defer.gatherResults([device.request("GET", "/api/whoami"), device.request("GET", "/api/whoami?b")],
                               consumeErrors=True)
    first, second = run(system, both)
    assert first.status == second.status == 200 and opened == [state.device_id]


def test_connector_restart_fails_the_request_in_flight_then_rehandshakes(system):
    device = system.device(system.add_device())
    run(system, device.open())
    run(system, device.handshake())
    system.connector.channels.end_all()  # the connector forgot every session (as after a restart)
    with pytest.raises(SessionLost):
        run(system, device.request("POST", "/api/whoami"))
    response = run(system, device.request("GET", "/api/whoami"))
    assert response.status == 200 and device.phase is Phase.LIVE


def test_a_get_cut_by_a_connector_restart_is_answered_on_the_new_session(system):
    device = system.device(system.add_device())
    run(system, device.open())
    run(system, device.handshake())
    system.connector.channels.end_all()
    response = run(system, device.request("GET", "/api/whoami"))  # RESET, HELLO, sent once more
    assert response.status == 200 and device.phase is Phase.LIVE


def test_a_small_file_body_goes_in_the_req(system, tmp_path):
    """Like bytes that fit one message, a small file is sent inside the
    ``req`` (``end: true``): the connector gives the app its length rather
    than a chunked body. A pipe, whose length is unknown, still streams."""
    device = system.device(system.add_device("erin"))
    run(system, device.open())
    run(system, device.handshake())
    sent = []
    session = device._session
    real_send = session.send
    session.send = lambda header, body=b"": (sent.append((header, bytes(body))), real_send(header, body))[1]
    form = tmp_path / "form.json"
    form.write_bytes(b'{"title": "hello"}')
    with open(form, "rb") as f:
        response = run(system, device.request("POST", "/upload", [], f))
    assert json.loads(run(system, response.content()))["bytes"] == len(form.read_bytes())
    [(req, body)] = [(h, b) for h, b in sent if h["t"] == "req"]
    assert req["end"] is True and body == form.read_bytes() and not [h for h, _ in sent if h["t"] == "body"]
    sent.clear()
    read, write = os.pipe()
    os.write(write, b"from a pipe")
    os.close(write)
    with open(read, "rb") as pipe:
        response = run(system, device.request("POST", "/upload", [], pipe))
    assert json.loads(run(system, response.content()))["bytes"] == len(b"from a pipe")
    [req] = [h for h, _ in sent if h["t"] == "req"]
    assert req["end"] is False and [h for h, _ in sent if h["t"] == "body"][-1]["end"] is True
