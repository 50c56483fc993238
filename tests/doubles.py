"""Test doubles shared by the in-memory tests: one of each, here.

* :class:`FakeSession` is an MQTT session as the router sees it;
* :class:`FakeAuth` is the session's authenticator (and the cluster's);
* :class:`Peer` is a client connection as the session sees it;
* :class:`Client` is a REST client of a gateway's API through StubTreq.
"""

import json

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.python.failure import Failure

from linchpin_common.contract import wire
from linchpin_gateway.hashing import Overloaded
from linchpin_gateway.router import CONNECTOR, DEVICE, Principal
from linchpin_gateway.session import Limits, MQTTSession
from linchpin_gateway.store import StoreUnavailable
from tests.conftest import basic, json_body

BASE = "http://gw.example:8080"
INST = "a" * 32
DEV = "d" * 32
USERS = {
    (INST, "ipw"): Principal(CONNECTOR, INST, INST),
    (DEV, "dpw"): Principal(DEVICE, DEV, INST),
}


def result(d):
    """The result of a Deferred that must have fired already (everything runs inline)."""
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


class FakeSession:
    def __init__(self):
        self.delivered = []
        self.raw = []  # the packets handed over as they are
        self.closed = None

    def deliver(self, topic, payload, qos, raw=None):
        if raw is not None and qos == 0:
            self.raw.append(raw)
            (packet,) = wire.Parser(1 << 20).feed(raw)  # what the session writes
            topic, payload = packet.topic.encode(), packet.payload
        self.delivered.append((topic.decode(), payload, qos))

    def close(self, reason):
        self.closed = reason

    held = False

    def hold(self):
        self.held = True

    def release(self):
        self.held = False

    def statuses(self):
        return [json.loads(p)["connector"] for t, p, _ in self.delivered if t == "$gateway/status"]

    def events(self):
        return [(json.loads(p)["event"], json.loads(p)["device_id"]) for t, p, _ in self.delivered
                if t == "$gateway/events"]


class FakeAuth:
    """Answers at once, or holds answers until released (``manual=True``)."""

    def __init__(self):
        self.manual = False
        self.waiting = []
        self.overloaded = False
        self.store_down = False
        self.forgotten = []

    def authenticate(self, username, password):
        if self.overloaded:
            return defer.fail(Overloaded())
        if self.store_down:
            return defer.fail(StoreUnavailable("down"))
        result = USERS.get((username, password))
        if self.manual:
            d = defer.Deferred()
            self.waiting.append((d, result))
            return d
        return defer.succeed(result)

    def cached(self, username, password):
        return None

    def login(self, host, username, password):
        """Without a LoginGuard: every login is checked."""
        return self.authenticate(username, password)

    def forget(self, *ids):
        """What a node's cluster calls when credentials change elsewhere."""
        self.forgotten.extend(ids)

    def release(self):
        for d, result in self.waiting:
            d.callback(result)
        self.waiting = []


class Peer:
    """One client connection: what the session wrote back, and whether it closed.

    It plays the session's transport: ``send``, ``disconnect``, and reading
    paused or resumed.
    """

    def __init__(self, router, auth, clock, max_packet=1 << 20, limits=None, host="192.0.2.1", guard=None):
        self.out = wire.Parser(1 << 24)
        self.received = []
        self.closed = None
        self.aborted = False
        self.reading = True
        self.sent_bytes = 0
        self.sent_alone = []  # what the session asked to go out at once (transport.send(..., alone=True))
        limits = limits or Limits(max_packet=max_packet)
        self.session = MQTTSession(router, guard or auth, clock, self, peer="test", host=host, limits=limits)

    def send(self, data, alone=False):
        self.sent_bytes += len(data)
        packets = self.out.feed(data)
        self.received.extend(packets)
        if alone:
            self.sent_alone.extend(packets)

    def disconnect(self, reason, abort=False):
        self.closed = reason
        self.aborted = abort

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True

    def feed(self, *packets):
        self.session.data_received(b"".join(wire.encode(p) for p in packets))

    send_packets = feed

    def take(self):
        got, self.received = self.received, []
        return got


def connect(user, password, keep_alive=60, **kw):
    return wire.Connect(client_id=kw.pop("client_id", "c"), username=user, password=password.encode(),
                        keep_alive=keep_alive, clean_session=kw.pop("clean_session", True), **kw)


class Client:
    def __init__(self, gateway):
        self.gateway = gateway
        self.treq = StubTreq(gateway.site.resource)

    def call(self, method, path, body=None, headers=None, raw=None):
        hdrs = dict(headers or {})
        data = raw
        if body is not None:
            data = json_body(body)
            hdrs.setdefault("Content-Type", "application/json")
        resp = result(self.treq.request(method, BASE + path, data=data, headers=hdrs))
        content = result(resp.content())
        parsed = json.loads(content) if content else None
        if content:
            assert resp.headers.getRawHeaders("content-type") == ["application/json"]
        return resp, parsed

    def register(self, **kw):
        resp, body = self.call("POST", "/api/v1/instances", {}, **kw)
        assert resp.code == 201, body
        return body

    def add_device(self, inst):
        resp, body = self.call("POST", "/api/v1/devices", {}, basic(inst["instance_id"], inst["instance_password"]))
        assert resp.code == 201, body
        return body

    def setup(self, setup_key):
        return self.call("POST", "/api/v1/devices/setup", {"device_setup_key": setup_key})
