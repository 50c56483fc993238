"""Issue 10 items 6 and 11: proxy timeouts restarted only by progress, the
per-user cap across devices, forwarding headers, and the request life cycle."""

from __future__ import annotations

import pytest
from twisted.internet import task
from twisted.web.client import ResponseDone
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from linchpin_common.contract.e2e import CREDIT_WINDOW, MAX_BODY_CHUNK
from linchpin_common.slots import Slots
from linchpin_common.machine import IllegalTransition
from linchpin_connector.proxy import DONE, Phase, _Request
from tests.test_proxy import USER, Device, held_proxy, req

TIMEOUT = 60


class BackendConnection:
    """The backend's side of a response being read: pause, resume, close."""

    def __init__(self):
        self.paused = False
        self.stopped = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        self.stopped = True


class Response:
    def __init__(self, code=200, length=None):
        self.code = code
        self.headers = Headers()
        self.length = length
        self.connection = BackendConnection()
        self.body = None

    def deliverBody(self, protocol):
        self.body = protocol
        protocol.makeConnection(self.connection)

    def send(self, data):
        self.body.dataReceived(data)

    def end(self):
        self.body.connectionLost(Failure(ResponseDone()))


def started(clock, **kw):
    """A request whose backend has answered 200 and sent nothing yet."""
    device = Device()
    proxy, agent = held_proxy(device, clock, response_timeout=TIMEOUT, **kw)
    proxy.handle(req(1, "/x"), b"")
    response = Response()
    agent.calls[0].d.callback(response)
    assert device.for_id(1)[0]["t"] == "res"
    return device, proxy, agent, response


def test_a_device_that_never_acks_frees_the_backend_connection():
    """Slow read: before, a response once started had no timeout at all."""
    clock = task.Clock()
    device, proxy, agent, response = started(clock)
    sent = 0
    while not response.connection.paused:
        response.send(b"x" * MAX_BODY_CHUNK)
        sent += MAX_BODY_CHUNK
    assert sent >= CREDIT_WINDOW
    clock.advance(TIMEOUT - 1)
    assert proxy.in_flight == 1
    clock.advance(1)
    assert device.for_id(1)[-1]["code"] == "timeout"
    assert response.connection.stopped and proxy.in_flight == 0


def test_acks_keep_a_slow_but_moving_download_alive():
    clock = task.Clock()
    device, proxy, agent, response = started(clock)
    for _ in range(10):
        response.send(b"y" * 1000)
        clock.advance(TIMEOUT - 1)
        proxy.handle({"t": "ack", "id": 1, "bytes": 1000}, b"")
        clock.advance(TIMEOUT - 1)
        response.send(b"")  # still within its idle time: data keeps it alive
    response.end()
    assert device.for_id(1)[-1] == {"t": "body", "id": 1, "end": True}


def test_an_ack_of_nothing_is_no_progress():
    clock = task.Clock()
    device, proxy, agent, response = started(clock)
    response.send(b"z" * 10)
    for _ in range(3):
        clock.advance(TIMEOUT / 2)
        proxy.handle({"t": "ack", "id": 1, "bytes": 0}, b"")
    assert device.for_id(1)[-1]["code"] == "timeout"


def test_a_silent_backend_after_its_headers_times_out():
    clock = task.Clock()
    device, proxy, agent, response = started(clock)
    clock.advance(TIMEOUT)
    assert device.for_id(1)[-1]["code"] == "timeout" and response.connection.stopped


def test_empty_body_messages_do_not_restart_the_upload_timer():
    """Slow POST: before, an empty body message restarted the timer."""
    clock = task.Clock()
    device = Device()
    proxy, agent = held_proxy(device, clock, response_timeout=TIMEOUT)
    proxy.handle(req(1, "/upload", "POST", end=False), b"x")
    for _ in range(5):
        clock.advance(TIMEOUT / 4)
        proxy.handle({"t": "body", "id": 1, "end": False}, b"")
        if proxy.in_flight == 0:
            break
    assert device.for_id(1)[-1]["code"] == "timeout" and agent.calls[0].cancelled


def test_an_upload_that_stalls_after_the_response_started_times_out():
    clock = task.Clock()
    device = Device()
    proxy, agent = held_proxy(device, clock, response_timeout=TIMEOUT)
    proxy.handle(req(1, "/upload", "POST", end=False), b"x")
    response = Response()
    agent.calls[0].d.callback(response)
    for _ in range(4):  # the response keeps moving, the upload does not
        clock.advance(TIMEOUT / 3)
        response.send(b"r")
        proxy.handle({"t": "ack", "id": 1, "bytes": 1}, b"")
    assert device.for_id(1)[-1]["code"] == "timeout"
    assert "request body" in device.for_id(1)[-1]["message"]


def test_one_users_devices_share_a_cap_on_requests_in_flight():
    slots = Slots(5)
    clock = task.Clock()
    phone, tablet = Device(), Device()
    p1, a1 = held_proxy(phone, clock, user_slots=slots)
    p2, a2 = held_proxy(tablet, clock, user_slots=slots)
    for rid in range(3):
        p1.handle(req(rid), b"")
        p2.handle(req(rid), b"")
    assert p1.in_flight == 3 and p2.in_flight == 2
    assert [h["code"] for h in tablet.for_id(2)] == ["busy"]
    p1.handle({"t": "cancel", "id": 0}, b"")
    p2.handle(req(9), b"")
    assert p2.in_flight == 3 and slots.held(USER) == 5
    p1.close()
    p2.close()
    assert slots.held(USER) == 0


def test_a_finished_request_gives_its_slot_back():
    slots = Slots(1)
    device = Device()
    proxy, agent = held_proxy(device, task.Clock(), user_slots=slots)
    for rid in range(3):
        proxy.handle(req(rid), b"")
        response = Response()
        agent.calls[rid].d.callback(response)
        response.send(b"ok")
        response.end()
        assert device.for_id(rid)[-1]["end"] is True
    assert slots.held(USER) == 0


FORGED = [("X-Forwarded-Host", "evil.example"), ("X-Forwarded-For", "10.0.0.1"), ("x_forwarded_proto", "http"),
          ("Forwarded", "for=10.0.0.1;host=evil.example"), ("X-Real-IP", "10.0.0.1"), ("X-Forwarded-Port", "443"),
          ("True-Client-IP", "10.0.0.1"), ("X-Original-URL", "/admin"), ("X-Forwarded-Prefix", "/x")]


@pytest.mark.parametrize("public_host", [None, "intranet.example.com"])
def test_forwarding_headers_are_the_connectors_own(public_host):
    device = Device()
    proxy, agent = held_proxy(device, task.Clock(), public_host=public_host)
    proxy.handle(req(1, "/", headers=FORGED + [("Accept", "text/html")]), b"")
    headers = agent.calls[0].headers
    got = {name.lower(): values for name, values in headers.getAllRawHeaders()}
    for name, _ in FORGED:
        normal = name.lower().replace("_", "-").encode()
        if normal not in (b"x-forwarded-proto", b"x-forwarded-host"):  # set below, by the connector
            assert normal not in got
    assert got[b"x-forwarded-proto"] == [b"https"]
    assert got.get(b"x-forwarded-host") == ([public_host.encode()] if public_host else None)
    assert got[b"x-forwarded-user"] == [USER.encode()]
    assert got[b"accept"] == [b"text/html"]


@pytest.mark.parametrize("bad", ["", "a b", "a/b", "a\r\nb"])
def test_public_host_is_checked(bad):
    with pytest.raises(ValueError):
        held_proxy(Device(), task.Clock(), public_host=bad)


def test_the_request_life_cycle_refuses_what_cannot_happen():
    device = Device()
    proxy, agent = held_proxy(device, task.Clock())
    proxy.handle(req(1), b"")
    (request,) = proxy._requests.values()
    with pytest.raises(IllegalTransition, match="input 'res_sent' is not allowed in state WAITING"):
        request._go("res_sent")
    request.abort()
    assert request.phase is DONE
    with pytest.raises(IllegalTransition):
        request._go("response")
    request.on_response(Response())  # a response after the cancel: dropped
    assert device.sent == []


def test_the_request_table_reaches_every_phase():
    from linchpin_connector.proxy import _REQUEST

    assert _REQUEST.reachable(Phase.WAITING) == set(Phase)
    assert _REQUEST.inputs() == {"response", "res_sent", "end"}


def test_phases_of_a_normal_request():
    device = Device()
    proxy, agent = held_proxy(device, task.Clock())
    proxy.handle(req(1), b"")
    (request,) = proxy._requests.values()
    assert isinstance(request, _Request) and request.phase is Phase.WAITING
    response = Response()
    agent.calls[0].d.callback(response)
    assert request.phase is Phase.STREAMING
    response.end()
    assert request.phase is DONE and proxy.in_flight == 0


@pytest.mark.parametrize("argv,ok", [
    (["--public-host", "wiki.example.com:8443"], True),
    (["--public-host", "wiki example"], False),
    (["--public-host", "evil/x"], False),
    (["--user-in-flight", "8"], True),
    (["--user-in-flight", "0"], False),
])
def test_connector_options(argv, ok):
    from twisted.python import usage

    from linchpin_connector.tap import Options

    options = Options()
    args = ["--backend", "http://intranet.example:8090", *argv]
    if ok:
        options.parseOptions(args)
    else:
        with pytest.raises(usage.UsageError):
            options.parseOptions(args)
