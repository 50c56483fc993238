"""Two connectors of one instance in memory: the real gateway, two real
ConnectorServices sharing one state, a real Device, the sample app, every
connection pumped by hand and the clock a MemoryReactorClock.

Drain, a hard stop and a failing backend, each seen from the device."""

from __future__ import annotations

import pytest
from treq.testing import StubTreq
from twisted.web.resource import Resource, getChildForRequest

from linchpin_common.gateway_client import GatewayAPI
from linchpin_common.workers import InlineWorker
from linchpin_connector.connector import DRAIN_SETTLE, ConnectorService
from linchpin_connector.device import BodyStream, SessionLost
from linchpin_connector.health import FALL, RISE
from linchpin_connector.sample_app import make_site
from linchpin_connector.state import ConnectorState
from tests.test_inmemory_relay import BASE, result
from tests.test_inmemory_system import System, run


class Switchable(Resource):
    """The sample app, or 503 for everything while ``down``."""

    isLeaf = True

    def __init__(self, clock):
        super().__init__()
        self.app = make_site(clock=clock).resource
        self.down = False

    def render(self, request):
        if self.down:
            request.setResponseCode(503)
            return b"down"
        request.postpath, request.prepath = request.path.split(b"/")[1:], []
        return getChildForRequest(self.app, request).render(request)


class TwoConnectors(System):
    """The System's connector is stopped; two named ones share its state."""

    def __init__(self, gateway, tmp_path):
        super().__init__(gateway, tmp_path)
        self.connector.stopService()
        self.pump()
        self.apps, self.connectors, self.pumps = {}, {}, {}
        for name in ("c1", "c2"):
            self.start(name)

    def start(self, name):
        self.apps[name] = Switchable(self.reactor)
        self.backends[name] = StubTreq(self.apps[name])
        service = ConnectorService(self.reactor, self.connector_dir, "http://app.test", name=name,
                                   connect=lambda *a, **kw: self._connect_named(name, *a, **kw),
                                   gateway_http=self.gateway_http, worker=InlineWorker(),
                                   backend_http=self.backends[name], health_interval=10)
        self.connectors[name] = service
        service.startService()
        self.pump()
        return service

    def _connect_named(self, name, reactor, url, username, password, *, on_message, **kw):
        d = self.net.open(username, password, on_message, kw.get("client_id", ""))
        self.pumps[name] = self.net.pumps[-1]
        return d

    def kill(self, name):
        """kill -9: the connection drops, nothing is said."""
        pump = self.pumps[name]
        pump.client.transport.abortConnection()
        self.pump()

    def pinned(self, device):
        return self.gateway.router.pinned_to(device.state.device_id)

    def stop(self):
        for service in self.connectors.values():
            if service.running:
                service.stopService()
        self.pump()
        self.cstate.close()


@pytest.fixture
def two(make_gateway, tmp_path):
    s = TwoConnectors(make_gateway(), tmp_path)
    yield s
    s.stop()


def settle(two):
    """The drain's last wait, for a HELLO that crossed it."""
    two.pump()
    two.reactor.advance(DRAIN_SETTLE)
    two.pump()


def served_by(two, device):
    """A GET through the device; the name of the connector that answered."""
    response = run(two, device.request("GET", "/api/whoami"))
    assert response.status == 200
    run(two, response.content())
    return two.pinned(device)


def ready_device(two, user="alice"):
    device = two.device(two.add_device(user))
    run(two, device.open())
    run(two, device.handshake())
    return device


def test_both_connectors_serve_and_a_pairing_proven_through_one_holds_for_the_other(two):
    device = ready_device(two)
    first = served_by(two, device)
    two.kill(first)
    run(two, device.handshake())  # a HELLO under the device secret, to the other connector
    assert two.pinned(device) != first and served_by(two, device) == two.pinned(device)


def test_a_drained_connector_finishes_its_requests_then_resets_its_devices(two):
    device = ready_device(two)
    name = served_by(two, device)
    slow = device.request("GET", "/slow?seconds=5")
    post = device.request("POST", "/upload", body=b"x" * 1000)
    two.pump()
    drained = two.connectors[name].drain(30)
    two.pump()
    assert not drained.called and not slow.called  # its requests finish first
    two.reactor.advance(5)
    settle(two)
    assert drained.called
    assert run(two, slow).status == 200 and run(two, post).status == 200
    other = "c2" if name == "c1" else "c1"
    assert two.pinned(device) == other  # RESET, HELLO: pinned to the ready one
    assert served_by(two, device) == other


def test_a_drain_past_its_timeout_resets_the_sessions_still_busy(two):
    device = ready_device(two)
    name = served_by(two, device)
    slow = device.request("GET", "/slow")  # never answers
    two.pump()
    drained = two.connectors[name].drain(3)
    two.reactor.advance(3)
    settle(two)
    assert drained.called
    # cut before any response part: a GET is sent once more, to the other connector
    other = "c2" if name == "c1" else "c1"
    assert two.pinned(device) == other and not slow.called
    slow.addErrback(lambda f: f.trap(Exception))  # /slow never answers: it fails when the test stops


def test_a_connector_killed_hard_moves_its_devices_and_a_get_is_sent_once_more(two):
    device = ready_device(two)
    name = served_by(two, device)
    get = device.request("GET", "/slow?seconds=1")
    upload = BodyStream()
    post = device.request("POST", "/upload", body=upload)
    upload.write(b"y" * 1000)  # and no end yet: in flight
    two.pump()
    two.kill(name)  # the gateway says `moved` at once: the socket closed
    two.reactor.advance(1)
    two.pump()
    other = "c2" if name == "c1" else "c1"
    assert two.pinned(device) == other
    with pytest.raises(SessionLost):
        run(two, post)  # it may have run: never replayed
    assert run(two, get).status == 200


def test_a_connector_whose_backend_fails_drains_until_it_answers(two):
    devices, names = [], set()
    while names != {"c1", "c2"}:  # device ids are random: as many as it takes for both to have some
        devices.append(ready_device(two, f"user{len(devices)}"))
        names.add(served_by(two, devices[-1]))
        assert len(devices) < 40
    two.apps["c1"].down = True
    for _ in range(FALL):
        two.reactor.advance(10)
        two.pump()
    assert not two.connectors["c1"].ready
    assert gauges(two.connectors["c1"]) == {"lmconnector_ready": 0, "lmconnector_backend_up": 0}
    for device in devices:
        assert served_by(two, device) == "c2"  # moved to the healthy one
    two.apps["c1"].down = False
    for _ in range(RISE):
        two.reactor.advance(10)
        two.pump()
    assert two.connectors["c1"].ready
    assert gauges(two.connectors["c1"]) == {"lmconnector_ready": 1, "lmconnector_backend_up": 1}
    newcomer = ready_device(two, "late")
    routers_ready = two.gateway.router._instances[two.instance["instance_id"]].ready_here()
    assert sorted(routers_ready) == ["c1", "c2"]
    assert served_by(two, newcomer) in ("c1", "c2")


def gauges(service) -> dict:
    from linchpin_connector.connector import ConnectorCollector

    wanted = ("lmconnector_ready", "lmconnector_backend_up")
    return {f.name: f.samples[0].value for f in ConnectorCollector(service).collect() if f.name in wanted}


def test_both_connectors_hear_a_revocation(two):
    device = ready_device(two)
    seen = {name: [] for name in two.connectors}
    for name, service in two.connectors.items():
        service.observers.append(type("O", (), {
            "gateway_event": lambda self, event, device_id, name=name: seen[name].append(event),
            "gateway_devices": lambda self, listed: None, "gateway_lost": lambda self: None})())
    api = GatewayAPI(two.gateway_http, BASE, two.instance["instance_id"], two.instance["instance_password"])
    result(api.revoke(device.state.device_id))
    two.pump()
    assert all("device_revoked" in events for events in seen.values()), seen
    assert ConnectorState(two.connector_dir).device(device.state.device_id) is None


def test_a_drain_resets_an_idle_session_once_its_device_has_been_quiet(two):
    """Not at once: a RESET crossing a request the device is sending would
    fail that request at the device, though it never ran."""
    device = ready_device(two)
    name = served_by(two, device)  # active a moment ago
    drained = two.connectors[name].drain(30)
    two.pump()
    assert not drained.called and two.pinned(device) == name
    two.reactor.advance(1)
    settle(two)
    assert drained.called and two.pinned(device) not in (None, name)

