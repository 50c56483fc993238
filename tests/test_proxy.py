"""RequestProxy (PROTOCOL.md section 5, "Proxying" and flow control).

The backend is the sample app (or a small recording site) on a real loopback
listener, reached through a treq HTTPClient on the real reactor. The test
plays the device: it receives what the proxy sends one reactor turn later,
as over a network, and acks only when it chooses. Nothing sleeps; a wait that
only a failure would hit is cut off after WAIT seconds.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from types import SimpleNamespace

import pytest
import pytest_twisted
import treq.client
from twisted.internet import defer, protocol, reactor, task
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import UNKNOWN_LENGTH

from linchpin_common.contract import e2e
from linchpin_common.contract.e2e import CREDIT_WINDOW, MAX_BODY_CHUNK, MAX_IN_FLIGHT
from linchpin_connector.proxy import RequestProxy
from linchpin_connector.sample_app import make_site, pattern

MiB = 1024 * 1024
WAIT = 10
USER = "alice"


# --- the device ------------------------------------------------------------

class Device:
    """Receives the proxy's messages, checks that each is valid on the wire,
    and hands them to the test per request id one reactor turn later."""

    def __init__(self):
        self.sent: list[tuple[dict, bytes]] = []
        self.by_id = defaultdict(list)
        self.read = defaultdict(int)
        self.waiting: dict[int, defer.Deferred] = {}
        self.on_send = None  # optional check run synchronously on every send

    def send(self, header: dict, body: bytes = b"") -> None:
        e2e.encode_message(header, body)
        self.sent.append((header, body))
        if self.on_send is not None:
            self.on_send(header, body)
        self.by_id[header.get("id")].append((header, body))
        self._deliver(header.get("id"))

    def _deliver(self, rid):
        d = self.waiting.get(rid)
        if d is not None and self.read[rid] < len(self.by_id[rid]):
            del self.waiting[rid]
            message = self.by_id[rid][self.read[rid]]
            self.read[rid] += 1
            reactor.callLater(0, d.callback, message)

    def next(self, rid) -> defer.Deferred:
        """The next message about request ``rid``."""
        assert rid not in self.waiting
        d = self.waiting[rid] = defer.Deferred()
        self._deliver(rid)
        return d.addTimeout(WAIT, reactor)

    def for_id(self, rid):
        return [h for h, _ in self.by_id[rid]]


def req(rid, path="/", method="GET", headers=(), end=True):
    return {"t": "req", "id": rid, "method": method, "path": path,
            "headers": [list(h) for h in headers], "end": end}


async def fetch(proxy, device, rid, path="/", method="GET", headers=(), body=b""):
    """One request with end:true; acks every response byte as it arrives."""
    proxy.handle(req(rid, path, method, headers), body)
    result = SimpleNamespace(status=None, headers=[], body=b"", err=None, acked=0)
    chunks = []
    while True:
        header, chunk = await device.next(rid)
        if header["t"] == "ack":
            result.acked += header["bytes"]
            continue
        if header["t"] == "err":
            result.err = header["code"]
            return result
        if header["t"] == "res":
            result.status, result.headers = header["status"], header["headers"]
        else:
            assert header["t"] == "body" and result.status is not None
        chunks.append(chunk)
        if header["end"]:
            result.body = b"".join(chunks)
            return result
        if chunk:
            proxy.handle({"t": "ack", "id": rid, "bytes": len(chunk)}, b"")


async def error_of(proxy, device, rid, path="/", **kw):
    result = await fetch(proxy, device, rid, path, **kw)
    return result.err


def names(pairs):
    return [name.lower().replace("_", "-") for name, _ in pairs]


# --- backends --------------------------------------------------------------

class Tap(resource.Resource):
    """Wraps a route of the sample app and reports each request's arrival
    and whether its connection was lost before it finished."""

    isLeaf = True

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.arrivals: list[defer.Deferred] = []
        self.lost: list[defer.Deferred] = []

    def render(self, request):
        lost = defer.Deferred()  # True: the connection was lost before the response ended
        request.notifyFinish().addCallbacks(lambda _: lost.callback(False), lambda _: lost.callback(True))
        self.lost.append(lost)
        for d in self.arrivals:
            reactor.callLater(0, d.callback, request)
        self.arrivals = []
        return self.inner.render(request)

    def arrival(self):
        d = defer.Deferred()
        self.arrivals.append(d)
        return d.addTimeout(WAIT, reactor)


class Recorder(resource.Resource):
    """Every path lands here; remembers what reached the backend."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.seen = []
        self.broken = []

    def render(self, request):
        self.seen.append(SimpleNamespace(method=request.method.decode(), uri=request.uri.decode("latin-1"),
                                         host=request.getHeader(b"host").decode()))
        if request.uri.startswith(b"/broken"):  # the test breaks the connection later
            request.setHeader(b"Content-Length", b"100000")
            request.write(b"x" * 1000)
            self.broken.append(request)
            return server.NOT_DONE_YET
        request.setHeader(b"X-Kept", b"yes")
        request.setHeader(b"Proxy-Authenticate", b"Basic")
        request.setHeader(b"Trailer", b"X-T")
        return b"recorded"


async def _listen(site):
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return port, f"http://127.0.0.1:{port.getHost().port}"


@pytest_twisted.async_yield_fixture
async def backend():
    site = make_site()
    root = site.resource
    taps = {}
    for name in (b"slow", b"download"):
        taps[name.decode()] = Tap(root.children[name])
        root.putChild(name, taps[name.decode()])
    port, url = await _listen(site)
    yield SimpleNamespace(url=url, host=url.split("//")[1], taps=taps)
    await port.stopListening()


@pytest_twisted.async_yield_fixture
async def recorder():
    record = Recorder()
    port, url = await _listen(server.Site(record))
    yield SimpleNamespace(url=url, host=url.split("//")[1], seen=record.seen, broken=record.broken)
    await port.stopListening()


@pytest_twisted.async_yield_fixture
async def http():
    pool = HTTPConnectionPool(reactor, persistent=True)
    yield treq.client.HTTPClient(Agent(reactor, pool=pool))
    await pool.closeCachedConnections()


def make_proxy(http_client, url, device, clock=reactor, **kw):
    return RequestProxy(http_client=http_client, backend_url=url, user=USER, send=device.send, clock=clock, **kw)


class HeldAgent:
    """An IAgent whose requests wait until the test answers them."""

    def __init__(self):
        self.calls = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        call = SimpleNamespace(method=method, uri=uri, headers=headers, producer=bodyProducer, cancelled=False)
        call.d = defer.Deferred(lambda _: setattr(call, "cancelled", True))
        self.calls.append(call)
        return call.d


class Consumer:
    def __init__(self):
        self.data = bytearray()

    def write(self, data):
        self.data += data


def held_proxy(device, clock=None, **kw):
    agent = HeldAgent()
    proxy = RequestProxy(http_client=treq.client.HTTPClient(agent), backend_url="http://backend.invalid/",
                         user=USER, send=device.send, clock=clock or task.Clock(), **kw)
    return proxy, agent


# --- identity, headers, responses ------------------------------------------

@pytest_twisted.ensureDeferred
async def test_page_is_served_as_the_paired_user(backend, http):
    device = Device()
    proxy = RequestProxy(http_client=http, backend_url=backend.url + "/", user="alice & <bob>",
                         send=device.send, clock=reactor)
    result = await fetch(proxy, device, 1, "/")
    assert result.status == 200
    assert b"Hello, alice &amp; &lt;bob&gt;" in result.body
    assert ["content-type", "text/html; charset=utf-8"] in [[k.lower(), v] for k, v in result.headers]
    assert proxy.in_flight == 0

    result = await fetch(proxy, device, 2, "/api/whoami?x=1&y=%2e%2e")
    assert json.loads(result.body) == {"user": "alice & <bob>", "method": "GET", "path": "/api/whoami",
                                       "query": "x=1&y=%2e%2e"}
    assert (await fetch(proxy, device, 3, "/no-such-page")).status == 404


@pytest_twisted.ensureDeferred
async def test_spoofed_identity_hop_by_hop_host_and_length_never_reach_the_backend(backend, http):
    device = Device()
    proxy = make_proxy(http, backend.url, device)
    sent = [("X-Forwarded-User", "mallory"), ("x-forwarded_user", "mallory"), ("X-FORWARDED-USER", "mallory"),
            ("X_Forwarded_User", "mallory"), ("Connection", "close, X-Hop"), ("X-Hop", "1"),
            ("Keep-Alive", "300"), ("Proxy-Authorization", "Basic Zm9v"), ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"), ("Trailer", "X-T"), ("Transfer-Encoding", "chunked"), ("Upgrade", "websocket"),
            ("Host", "evil.example"), ("content_length", "5"), ("Content-Length", "5"),
            ("Accept", "text/plain"), ("X-Custom", "kept"), ("X-Custom", "twice")]
    result = await fetch(proxy, device, 1, "/echo-headers", headers=sent)
    received = json.loads(result.body)["headers"]
    got = defaultdict(list)
    for name, value in received:
        got[name.lower().replace("_", "-")].append(value)
    assert got["x-forwarded-user"] == [USER]
    assert got["host"] == [backend.host]
    assert got["accept"] == ["text/plain"]
    assert got["x-custom"] == ["kept", "twice"]
    for dropped in ("connection", "x-hop", "keep-alive", "proxy-authorization", "proxy-connection", "te",
                    "trailer", "transfer-encoding", "upgrade", "content-length"):
        assert dropped not in got, dropped


@pytest_twisted.ensureDeferred
async def test_custom_identity_header_and_response_hop_by_hop(recorder, http):
    device = Device()
    proxy = make_proxy(http, recorder.url, device, user_header="X-Remote-User")
    result = await fetch(proxy, device, 1, "/x", headers=[("X-Remote_User", "mallory")])
    assert result.status == 200 and result.body == b"recorded"
    kept = names(result.headers)
    assert "x-kept" in kept and "content-length" in kept
    assert "proxy-authenticate" not in kept and "trailer" not in kept


@pytest_twisted.ensureDeferred
async def test_body_in_the_req_message_is_sent_and_acked(backend, http):
    device = Device()
    proxy = make_proxy(http, backend.url, device)
    data = random.Random(7).randbytes(200_000)
    result = await fetch(proxy, device, 1, "/upload", method="POST", body=data)
    assert json.loads(result.body) == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert result.acked == len(data)


# --- paths -----------------------------------------------------------------

FORBIDDEN = ["//evil", "//evil.com/x", "/a/../b", "/a/%2e%2e/b", "/a/%2E%2e/b", "/a/.%2E/b", "/a/%2E/b", "/./x",
             "/..", "/a/..", "/a/..;/b", "/a/%2e%2e%3b/b", "/a\\b", "/a%5cb", "/a%5Cb", "/a%2fb", "/a/%2F../b",
             "/a\x00b", "/a\nb", "/a\rb", "/a\tb", "/a\x7fb", "/a?q=\x01", "/a?q=\x7f", "/a b", "/caf\u00e9",
             "/a#frag", "/a/%zz", "/a/%2", "/a/%00", "/a/%0d%0a", "http://evil/x", "", "relative/x", ".", "?x"]


@pytest_twisted.ensureDeferred
async def test_path_injection_is_forbidden_and_never_reaches_the_backend(recorder, http):
    device = Device()
    proxy = make_proxy(http, recorder.url, device)
    for rid, path in enumerate(FORBIDDEN):
        assert await error_of(proxy, device, rid, path) == "forbidden", repr(path)
    assert recorder.seen == []
    assert proxy.in_flight == 0


@pytest_twisted.ensureDeferred
async def test_allowed_paths_reach_the_backend_host_unchanged(recorder, http):
    device = Device()
    proxy = make_proxy(http, recorder.url + "/", device)
    paths = ["/", "/@evil.com", "/%40evil.com/x", "/a:b@evil.com", "/a/b/", "/a//b", "/a/...", "/a/.b",
             "/caf%C3%A9", "/a?q=//evil.com/../x&r=%2e%2e%2f%00", "/a?url=http://evil/"]
    for rid, path in enumerate(paths):
        assert (await fetch(proxy, device, rid, path)).status == 200, path
    assert [s.uri for s in recorder.seen] == paths
    assert {s.host for s in recorder.seen} == {recorder.host}


@pytest_twisted.ensureDeferred
async def test_allow_list_matches_whole_segments(recorder, http):
    device = Device()
    proxy = make_proxy(http, recorder.url, device, allow_paths=("/app", "/static/"))
    allowed = ["/app", "/app/", "/app/x", "/app?q=1", "/static", "/static/a.css"]
    for rid, path in enumerate(allowed):
        assert (await fetch(proxy, device, rid, path)).status == 200, path
    for rid, path in enumerate(["/application", "/ap", "/", "/App", "/staticx", "/ap%70/x", "/x/app"], 100):
        assert await error_of(proxy, device, rid, path) == "forbidden", path
    assert [s.uri for s in recorder.seen] == allowed


# --- flow control ----------------------------------------------------------

class SpyAgent:
    """A real Agent whose response transports report how the proxy drives them."""

    def __init__(self, agent):
        self.agent = agent
        self.paused = False
        self.pauses = 0
        self.received = 0

    def request(self, method, uri, headers=None, bodyProducer=None):
        return self.agent.request(method, uri, headers, bodyProducer).addCallback(self._wrap)

    def _wrap(self, response):
        deliver, spy = response.deliverBody, self

        class Spy(protocol.Protocol):
            def __init__(self, inner):
                self.inner = inner

            def makeConnection(self, transport):
                self.inner.makeConnection(SpyTransport(transport))

            def dataReceived(self, data):
                spy.received += len(data)
                self.inner.dataReceived(data)

            def connectionLost(self, reason):
                self.inner.connectionLost(reason)

        class SpyTransport:
            def __init__(self, transport):
                self.transport = transport

            def pauseProducing(self):
                spy.paused, spy.pauses = True, spy.pauses + 1
                self.transport.pauseProducing()

            def resumeProducing(self):
                spy.paused = False
                self.transport.resumeProducing()

            def stopProducing(self):
                self.transport.stopProducing()

        response.deliverBody = lambda protocol: deliver(Spy(protocol))
        return response


async def turns(n=5):
    for _ in range(n):
        await task.deferLater(reactor, 0, lambda: None)


@pytest_twisted.ensureDeferred
async def test_download_never_exceeds_the_window_and_pauses_the_backend(backend, http):
    size = 20 * MiB
    spy = SpyAgent(http._agent)
    device = Device()
    proxy = make_proxy(treq.client.HTTPClient(spy), backend.url, device)
    state = SimpleNamespace(unacked=0, sent=0, problems=[])

    def check(header, body):
        state.unacked += len(body)
        state.sent += len(body)
        if state.unacked > CREDIT_WINDOW:
            state.problems.append(f"{state.unacked} bytes unacked")
        if spy.received - state.sent > 65536:
            state.problems.append(f"{spy.received - state.sent} bytes held by the proxy")

    def ack(n):
        nonlocal unacked
        unacked -= n
        state.unacked -= n  # before the proxy can use the credit
        proxy.handle({"t": "ack", "id": 1, "bytes": n}, b"")

    device.on_send = check
    proxy.handle(req(1, f"/download?size={size}"), b"")
    digest, got, unacked, fulls, first = hashlib.sha256(), 0, 0, 0, True
    rng = random.Random(1)
    while True:
        header, body = await device.next(1)
        assert header["t"] == ("res" if first else "body")
        first = False
        digest.update(body)
        got += len(body)
        unacked += len(body)
        if header["end"]:
            break
        if unacked == CREDIT_WINDOW:
            # Window full: the proxy has stopped reading the backend and
            # sends nothing more, however long we take.
            fulls += 1
            assert spy.paused
            before, received = len(device.sent), spy.received
            await turns()
            assert len(device.sent) == before and spy.received == received
            ack(rng.randrange(1, CREDIT_WINDOW + 1))
        elif rng.random() < 0.05:
            ack(rng.randrange(0, unacked + 1))
    assert state.problems == []
    assert got == size and digest.digest() == hashlib.sha256(b"".join(pattern(size))).digest()
    assert fulls >= 5 and spy.pauses >= 5
    assert proxy.in_flight == 0


@pytest_twisted.ensureDeferred
async def test_upload_streams_with_acks_after_the_backend_took_the_bytes(backend, http):
    device = Device()
    proxy = make_proxy(http, backend.url, device)
    data = random.Random(2).randbytes(6 * MiB + 12345)
    first = 100_000
    proxy.handle(req(1, "/upload", "POST", end=False), data[:first])
    sent, acked = first, 0
    while True:
        while sent < len(data) and sent - acked < CREDIT_WINDOW:
            n = min(MAX_BODY_CHUNK, len(data) - sent, CREDIT_WINDOW - (sent - acked))
            proxy.handle({"t": "body", "id": 1, "end": sent + n == len(data)}, data[sent:sent + n])
            sent += n
        header, body = await device.next(1)
        if header["t"] != "ack":
            break
        acked += header["bytes"]
        assert acked <= sent
    assert acked == len(data)
    assert header["t"] == "res" and header["status"] == 200
    chunks = [body]
    while not header["end"]:
        header, body = await device.next(1)
        chunks.append(body)
    assert json.loads(b"".join(chunks)) == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_request_body_is_acked_only_when_handed_to_the_backend():
    device = Device()
    proxy, agent = held_proxy(device)
    proxy.handle(req(1, "/upload", "POST", end=False), b"a" * 1000)
    proxy.handle({"t": "body", "id": 1, "end": False}, b"b" * 2000)
    (call,) = agent.calls
    assert call.producer.length is UNKNOWN_LENGTH
    assert device.sent == []  # nothing has reached a backend connection yet
    consumer = Consumer()
    finished = call.producer.startProducing(consumer)
    assert bytes(consumer.data) == b"a" * 1000 + b"b" * 2000
    assert device.for_id(1) == [{"t": "ack", "id": 1, "bytes": 3000}]
    call.producer.pauseProducing()  # the connection's buffer is full
    proxy.handle({"t": "body", "id": 1, "end": True}, b"c" * 500)
    assert len(device.sent) == 1 and len(consumer.data) == 3000 and not finished.called
    call.producer.resumeProducing()
    assert device.for_id(1)[-1] == {"t": "ack", "id": 1, "bytes": 500}
    assert consumer.data.endswith(b"c" * 500) and finished.called


def test_device_over_its_upload_window_gets_too_large():
    device = Device()
    proxy, agent = held_proxy(device)
    proxy.handle(req(1, "/upload", "POST", end=False), b"")
    for _ in range(CREDIT_WINDOW // MAX_BODY_CHUNK):
        proxy.handle({"t": "body", "id": 1, "end": False}, b"x" * MAX_BODY_CHUNK)
    assert device.sent == []  # exactly 1 MiB unacked is still within the rules
    proxy.handle({"t": "body", "id": 1, "end": False}, b"x")
    assert device.for_id(1)[0]["code"] == "too_large"
    assert agent.calls[0].cancelled and proxy.in_flight == 0
    proxy.handle({"t": "body", "id": 1, "end": True}, b"x")  # forgotten: ignored
    assert len(device.sent) == 1


# --- cancel, close, errors -------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_cancel_stops_a_waiting_backend_request(backend, http):
    device = Device()
    proxy = make_proxy(http, backend.url, device)
    tap = backend.taps["slow"]
    arrived = tap.arrival()
    proxy.handle(req(1, "/slow"), b"")
    await arrived
    proxy.handle({"t": "cancel", "id": 1}, b"")
    assert proxy.in_flight == 0
    assert await tap.lost[0].addTimeout(WAIT, reactor) is True
    assert device.sent == []


@pytest_twisted.ensureDeferred
async def test_cancel_during_a_download_closes_the_backend_connection(backend, http):
    device = Device()
    proxy = make_proxy(http, backend.url, device)
    tap = backend.taps["download"]
    proxy.handle(req(1, f"/download?size={64 * MiB}"), b"")
    header, _ = await device.next(1)
    assert header["t"] == "res" and header["status"] == 200
    assert ["Content-Length", str(64 * MiB)] in header["headers"]
    proxy.handle({"t": "cancel", "id": 1}, b"")
    count = len(device.sent)
    assert await tap.lost[0].addTimeout(WAIT, reactor) is True
    assert len(device.sent) == count and proxy.in_flight == 0


@pytest_twisted.ensureDeferred
async def test_close_aborts_everything_and_sends_nothing_more(backend, http):
    device = Device()
    proxy = make_proxy(http, backend.url, device)
    tap = backend.taps["slow"]
    for rid in (1, 2):
        arrived = tap.arrival()
        proxy.handle(req(rid, "/slow"), b"")
        await arrived
    proxy.close()
    assert proxy.in_flight == 0
    assert await defer.gatherResults([d.addTimeout(WAIT, reactor) for d in tap.lost]) == [True, True]
    proxy.handle(req(3, "/"), b"")
    assert device.sent == [] and proxy.in_flight == 0


@pytest_twisted.ensureDeferred
async def test_unreachable_backend(http):
    port = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
    closed = f"http://127.0.0.1:{port.getHost().port}"
    await port.stopListening()
    device = Device()
    proxy = make_proxy(http, closed, device)
    assert await error_of(proxy, device, 1, "/") == "backend_unreachable"
    assert proxy.in_flight == 0


@pytest_twisted.ensureDeferred
async def test_backend_failing_mid_body(recorder, http):
    device = Device()
    proxy = make_proxy(http, recorder.url, device)
    proxy.handle(req(1, "/broken"), b"")
    header, body = await device.next(1)
    assert header["t"] == "res" and header["status"] == 200
    got = len(body)
    while got < 1000:  # wait until the response is streaming
        header, body = await device.next(1)
        assert header["t"] == "body" and not header["end"]
        got += len(body)
    recorder.broken[0].channel.transport.abortConnection()
    header, _ = await device.next(1)
    assert header["t"] == "err" and header["code"] == "backend_unreachable" and proxy.in_flight == 0


@pytest_twisted.ensureDeferred
async def test_timeout_cancels_the_backend_request(backend, http):
    clock = task.Clock()
    device = Device()
    proxy = make_proxy(http, backend.url, device, clock=clock, response_timeout=30)
    tap = backend.taps["slow"]
    arrived = tap.arrival()
    proxy.handle(req(1, "/slow"), b"")
    await arrived
    clock.advance(29.9)
    assert device.sent == []
    clock.advance(0.2)
    assert device.for_id(1)[0]["code"] == "timeout" and proxy.in_flight == 0
    assert await tap.lost[0].addTimeout(WAIT, reactor) is True


def test_timeout_restarts_with_each_body_message():
    clock = task.Clock()
    device = Device()
    proxy, agent = held_proxy(device, clock, response_timeout=60)
    proxy.handle(req(1, "/upload", "POST", end=False), b"x")
    for _ in range(3):
        clock.advance(50)
        proxy.handle({"t": "body", "id": 1, "end": False}, b"x")
    assert device.sent == []
    clock.advance(60)
    assert device.for_id(1)[0]["code"] == "timeout" and agent.calls[0].cancelled


def test_65th_request_is_busy():
    device = Device()
    proxy, agent = held_proxy(device)
    for rid in range(MAX_IN_FLIGHT):
        proxy.handle(req(rid), b"")
    assert device.sent == [] and proxy.in_flight == MAX_IN_FLIGHT
    proxy.handle(req(1000), b"")
    assert [h["code"] for h in device.for_id(1000)] == ["busy"]
    proxy.handle({"t": "cancel", "id": 5}, b"")
    assert agent.calls[5].cancelled and proxy.in_flight == MAX_IN_FLIGHT - 1
    proxy.handle(req(1001), b"")
    assert proxy.in_flight == MAX_IN_FLIGHT and len(device.sent) == 1


def test_duplicate_id_is_a_bad_request():
    device = Device()
    proxy, agent = held_proxy(device)
    proxy.handle(req(7), b"")
    proxy.handle(req(7, "/other"), b"")
    assert [h["code"] for h in device.for_id(7)] == ["bad_request"]
    assert len(agent.calls) == 1 and agent.calls[0].cancelled and proxy.in_flight == 0


MALFORMED = [
    {"method": "GE T"}, {"method": ""}, {"method": 5}, {"method": None}, {"path": 5}, {"path": None},
    {"headers": {"a": "b"}}, {"headers": [["a"]]}, {"headers": [["a", "b", "c"]]}, {"headers": [("a", 1)]},
    {"headers": ["ab"]}, {"headers": [["X-Forwarded-User:alice", "x"]]}, {"headers": [["X-A", "a\r\nX-B: b"]]},
    {"headers": [["X-A", "a\nb"]]}, {"headers": [["X-A", "a\x00"]]}, {"headers": [["X A", "a"]]},
    {"headers": [["", "a"]]}, {"headers": [["X-A\r\n", "a"]]}, {"end": None}, {"end": 1}, {"end": "true"},
]


@pytest.mark.parametrize("change", MALFORMED, ids=repr)
def test_malformed_req_fields_are_bad_requests(change):
    device = Device()
    proxy, agent = held_proxy(device)
    message = req(3)
    message.update(change)
    proxy.handle(message, b"")
    assert [h["code"] for h in device.for_id(3)] == ["bad_request"]
    assert agent.calls == [] and proxy.in_flight == 0


@pytest.mark.parametrize("rid", [True, False, -1, 2**53, 1.0, "1", None])
def test_req_without_a_usable_id_is_dropped(rid):
    device = Device()
    proxy, agent = held_proxy(device)
    proxy.handle(req(rid), b"")
    message = req(1)
    del message["id"]
    proxy.handle(message, b"")
    assert device.sent == [] and agent.calls == []


def test_unknown_ids_and_types_are_ignored():
    device = Device()
    proxy, agent = held_proxy(device)
    proxy.handle(req(2**53 - 1), b"")
    for message in ({"t": "ack", "id": 1, "bytes": 5}, {"t": "body", "id": 1, "end": True},
                    {"t": "cancel", "id": 1}, {"t": "cancel", "id": True}, {"t": "cancel"},
                    {"t": "res", "id": 2**53 - 1}, {"t": "confirm"}):
        proxy.handle(message, b"")
    assert device.sent == [] and proxy.in_flight == 1 and not agent.calls[0].cancelled
    proxy.handle({"t": "ack", "id": 2**53 - 1, "bytes": 1}, b"")  # nothing was sent to ack
    assert device.for_id(2**53 - 1)[0]["code"] == "bad_request" and agent.calls[0].cancelled


def test_constructor_checks_its_configuration():
    for bad in ({"allow_paths": ("app",)}, {"user_header": "X User"}, {"user": "a\r\nb"}):
        kw = {"user": USER, **bad}
        with pytest.raises(ValueError):
            RequestProxy(http_client=HeldAgent(), backend_url="http://b", send=lambda *a: None,
                         clock=task.Clock(), **kw)


def test_unsent_response_bytes_come_out_in_order_and_a_whole_read_is_not_copied():
    from linchpin_connector.proxy import _Unsent

    unsent = _Unsent()
    read = bytes(range(256)) * 1024
    unsent.add(read)
    assert unsent.take(len(read)) is read and len(unsent) == 0  # the read itself
    reads = [bytes([i]) * n for i, n in enumerate([5, 0, 3, 70000, 1, 262144])]
    for r in reads:
        unsent.add(r)
    stream = b"".join(reads)
    out = []
    for n in [2, 3, 0, 4, 69999, 262144, 1]:
        out.append(bytes(unsent.take(n)))
    assert b"".join(out) == stream and len(unsent) == 0
