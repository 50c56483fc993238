"""``lmdevice serve``: the local HTTP server that carries a browser's requests through the device.

In memory first (a fake device behind the real twisted.web site, driven by
treq's StubTreq), then one loopback test with the real commands for the
error pages a browser sees when the connector or the gateway is away.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import io
import json
import os
import pty
import subprocess

import pytest
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.server import Site

from linchpin_connector.device.errors import (ConnectorOffline, DeviceError, DeviceNotAccepted, GatewayUnreachable,
                                              RequestRefused, SessionLost)
from linchpin_connector.device.progress import Progress
from linchpin_connector.device.serve import HostCheck, LocalProxy, cross_site, rewrite_location
from tests.support import BIN, Process, System, cli


# -- pure parts ------------------------------------------------------------------


@pytest.mark.parametrize("host, ok", [
    (b"127.0.0.1:8088", True), (b"localhost:8088", True),
    (b"127.0.0.1:8089", False), (b"127.0.0.1", False), (b"evil.example:8088", False),
    (b"127.0.0.1.nip.io:8088", False), (b"[::1]:8088", False), (b"user@127.0.0.1:8088", False),
    (b"127.0.0.1:8088/x", False), (b"", False), (None, False), (b"\xff:8088", False),
])
def test_host_check_on_loopback(host, ok):
    assert HostCheck("127.0.0.1", 8088)(host) is ok


def test_host_check_on_all_interfaces_takes_ip_addresses_only():
    check = HostCheck("0.0.0.0", 80)
    assert check(b"192.0.2.7") and check(b"192.0.2.7:80") and check(b"[2001:db8::1]")
    assert not check(b"intranet.example") and not check(b"192.0.2.7:81")
    assert not check.loopback and HostCheck("::1", 1).loopback and HostCheck("::1", 1)(b"[::1]:1")


class _Req:
    def __init__(self, method, **headers):
        self.method = method
        self.headers = {k.replace("_", "-").encode(): v for k, v in headers.items()}

    def getHeader(self, name):
        return self.headers.get(name.lower())


@pytest.mark.parametrize("method, headers, refused", [
    # Before: any local page could make GETs as the paired user (<img>, <script>).
    (b"GET", {"origin": b"http://evil.example", "sec_fetch_site": b"cross-site"}, True),
    (b"GET", {"sec_fetch_site": b"cross-site", "sec_fetch_mode": b"no-cors", "sec_fetch_dest": b"image"}, True),
    (b"GET", {"sec_fetch_site": b"same-site", "sec_fetch_mode": b"navigate"}, True),  # another port: same site
    (b"GET", {"sec_fetch_site": b"none", "sec_fetch_mode": b"navigate"}, False),  # typed or a bookmark
    (b"GET", {"sec_fetch_site": b"none", "sec_fetch_mode": b"no-cors"}, True),
    (b"GET", {"sec_fetch_site": b"same-origin", "sec_fetch_mode": b"no-cors"}, False),
    (b"GET", {}, False),  # curl
    (b"GET", {"referer": b"http://127.0.0.1:3000/page"}, True),  # an old browser, from another port
    (b"GET", {"referer": b"http://127.0.0.1:8088/page"}, False),
    (b"HEAD", {"origin": b"http://127.0.0.1:9999"}, True),
    (b"POST", {}, False),
    (b"POST", {"origin": b"http://127.0.0.1:8088", "sec_fetch_site": b"same-origin"}, False),
    (b"POST", {"sec_fetch_site": b"none"}, True),
    (b"POST", {"origin": b"http://evil.example"}, True),
    (b"POST", {"origin": b"null"}, True),
    (b"DELETE", {"sec_fetch_site": b"same-site"}, True),
    (b"PUT", {"sec_fetch_site": b"cross-site", "origin": b"http://127.0.0.1:8088"}, True),
    # Before: a CORS preflight went to the app as the paired user.
    (b"OPTIONS", {"origin": b"http://evil.example", "access_control_request_method": b"PUT"}, True),
    (b"OPTIONS", {"sec_fetch_site": b"same-origin", "access_control_request_method": b"PUT"}, True),
    (b"OPTIONS", {}, False),
])
def test_requests_other_sites_made_are_refused_whatever_the_method(method, headers, refused):
    assert cross_site(_Req(method, **headers), b"127.0.0.1:8088") is refused


@pytest.mark.parametrize("value, expected", [
    ("http://intranet.local:8090/notes?x=1", "/notes?x=1"),
    ("https://intranet.local", "/"),
    ("/already/a/path", "/already/a/path"),
    ("relative", "relative"),
    ("mailto:someone@example.com", "mailto:someone@example.com"),
    # Before: these reached the browser as they were, and it left for evil.example.
    ("//evil.example/x", "/x"),
    ("/\\evil.example", "/"),
    ("\\\\evil.example", "/"),
    ("/\t/evil.example", "/"),
    ("  //evil.example", "/"),
    ("http://intranet.local//evil.example/p?q=1", "/evil.example/p?q=1"),
    ("http://intranet.local/\\evil.example", "/evil.example"),
    # Before: these too, as a browser's URL parser reads http(s): with any slashes.
    ("http:\\\\evil.example/x", "/x"),
    ("http:/\\evil.example", "/"),
    ("https:/evil.example", "/"),
    ("https:evil.example", "/"),
    ("HTTPS:evil.example/p", "/p"),
])
def test_location_to_the_app_becomes_a_path(value, expected):
    assert rewrite_location(value) == expected


def test_progress_bar_only_for_large_bodies():
    small = io.StringIO()
    p = Progress(small, 1024 * 1024)
    p.update(1024 * 1024)
    p.finish()
    assert small.getvalue() == ""

    out = io.StringIO()
    p = Progress(out, 8 * 1024 * 1024)
    for _ in range(8):
        p.update(1024 * 1024)
    p.finish()
    frames = out.getvalue().split("\r")[1:]
    assert frames[0].startswith("[###") and "12%" in frames[0]
    assert frames[-1].startswith("[" + "#" * 30 + "] 100% 8.0 MiB of 8.0 MiB") and out.getvalue().endswith("\n")

    unknown = io.StringIO()
    p = Progress(unknown, None)
    for _ in range(6):
        p.update(1024 * 1024)
    assert unknown.getvalue().split("\r")[1:] == ["4.0 MiB received", "5.0 MiB received", "6.0 MiB received"]


# -- the site in memory --------------------------------------------------------------


class FakeResponse:
    def __init__(self, status, headers, parts, error=None):
        self.status, self.headers, self.parts, self.error = status, headers, parts, error
        self.calls = []

    def pause(self):
        self.calls.append("pause")

    def resume(self):
        self.calls.append("resume")

    def cancel(self):
        self.calls.append("cancel")

    def deliver(self, write):
        for part in self.parts:
            write(part)
        return defer.fail(self.error) if self.error else defer.succeed(None)


class FakeLink:
    """Stands for the Device: records requests, answers what the test says."""

    def __init__(self):
        self.seen = []
        self.answer = FakeResponse(200, [("Content-Type", "text/plain")], [b"hello"])

    async def request(self, method, path, headers, body):
        body = body if isinstance(body, bytes) else body.read()
        self.seen.append((method, path, headers, body))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.fixture
def local():
    link = FakeLink()
    stub = StubTreq(LocalProxy(link, HostCheck("127.0.0.1", 8088)))
    return link, stub


def fetch(stub, method, url, **kwargs):
    d = stub.request(method, url, allow_redirects=False, **kwargs)
    stub.flush()
    response = d.result if not isinstance(d.result, Exception) else None
    body = stub.content(response)
    stub.flush()
    return response, body.result


def test_a_request_goes_through_with_method_path_headers_and_body(local):
    link, stub = local
    link.answer = FakeResponse(303, [("Location", "http://intranet.local:8090/notes"), ("Connection", "close"),
                                     ("Set-Cookie", "sid=1; Domain=intranet.local; Path=/; HttpOnly"),
                                     ("X-App", "yes")], [b"part1", b"part2"])
    response, body = fetch(stub, "POST", "http://127.0.0.1:8088/notes?a=1", data=b"note=hi",
                           headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://127.0.0.1:8088",
                                    "X-Forwarded-User": "mallory"})
    method, path, headers, sent = link.seen[0]
    assert (method, path, sent) == ("POST", "/notes?a=1", b"note=hi")
    names = [k.lower() for k, _ in headers]
    assert "host" not in names and "origin" not in names and "content-length" not in names
    assert ("Content-Type", "application/x-www-form-urlencoded") in headers
    assert response.code == 303 and body == b"part1part2"
    assert response.headers.getRawHeaders("location") == ["/notes"]
    [cookie] = response.headers.getRawHeaders("set-cookie")
    assert cookie.startswith("lm8088_sid=") and cookie.endswith("; Path=/; HttpOnly") and "Domain" not in cookie
    assert "=1;" not in cookie  # sealed: another port on 127.0.0.1 receives nothing it can use
    assert response.headers.getRawHeaders("x-app") == ["yes"]


def test_foreign_host_and_cross_site_post_never_reach_the_device(local):
    link, stub = local
    response, body = fetch(stub, "GET", "http://evil.example:8088/")
    assert response.code == 403 and b"Unknown host name" in body
    response, body = fetch(stub, "POST", "http://127.0.0.1:8088/notes", data=b"x",
                           headers={"Origin": "http://evil.example"})
    assert response.code == 403 and b"Cross-site request refused" in body
    assert link.seen == []


@pytest.mark.parametrize("error, status, text", [
    (GatewayUnreachable("gateway unreachable at https://gw: refused"), 502, b"The gateway cannot be reached"),
    (ConnectorOffline(), 503, b"The intranet connector is offline"),
    (RequestRefused("forbidden", "path not allowed"), 403, b"refused this address"),
    (SessionLost("the connector lost the session; request not replayed"), 502, b"not replayed"),
    (DeviceNotAccepted(), 403, b"no longer paired"),
    (DeviceError("cannot write the device state"), 502, b"cannot write the device state"),
])
def test_errors_become_a_page_that_says_which_part_is_away(local, error, status, text):
    link, stub = local
    link.answer = error
    response, body = fetch(stub, "GET", "http://127.0.0.1:8088/")
    assert response.code == status and text in body
    assert response.headers.getRawHeaders("cache-control") == ["no-store"]


def test_a_response_cut_midway_is_not_shown_as_complete(local):
    link, stub = local
    link.answer = FakeResponse(200, [], [b"12345"],  # chunked: only a cut shows it broken
                               error=SessionLost("the connector lost the session; request not replayed"))
    d = stub.request("GET", "http://127.0.0.1:8088/big")
    stub.flush()
    body = stub.content(d.result)
    stub.flush()
    assert body.called and isinstance(body.result.value, Exception)  # the client saw a broken response
    body.addErrback(lambda f: None)


def local_channel(link):
    """One HTTP connection to the local server over a StringTransport; its
    timers run on a fake clock, never the global reactor."""
    site = Site(LocalProxy(link, HostCheck("127.0.0.1", 8088)), reactor=MemoryReactorClock())
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def test_the_browser_sets_the_pace_and_leaving_cancels(local):
    link, _ = local
    body = defer.Deferred()
    link.answer = FakeResponse(200, [], [b"first part"])
    link.answer.deliver = lambda write: (write(b"first part"), body)[1]
    channel, transport = local_channel(link)
    channel.dataReceived(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1:8088\r\n\r\n")
    assert b"first part" in transport.value()
    transport.producer.pauseProducing()  # the browser's socket buffer is full
    transport.producer.resumeProducing()
    assert link.answer.calls == ["pause", "resume"]
    channel.connectionLost(Failure(ConnectionDone("the browser left")))
    assert link.answer.calls[-1] == "cancel"  # the connector stops sending it
    body.errback(DeviceError("the response was abandoned"))  # what cancel() makes of it
    assert not transport.disconnecting  # nothing more done with the gone request


def test_a_raw_non_ascii_path_gets_an_answer_not_a_hang(local):
    link, _ = local
    link.answer = RequestRefused("forbidden", "path not allowed")
    channel, transport = local_channel(link)
    channel.dataReceived(b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: 127.0.0.1:8088\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400 ") and link.seen == []  # the HTTP layer refuses it


class _Channel:
    def __init__(self):
        self.sent = []
        self.requests = {}

    def send(self, header, body=b""):
        self.sent.append(header)


class _PendingRequest:
    def __init__(self, channel):
        self.channel, self.id, self.acks = channel, 7, []
        channel.requests[7] = self

    def ack(self, n):
        self.acks.append(n)


def test_a_paused_response_holds_parts_unacked_until_resumed():
    from linchpin_connector.device.bodies import Response

    request = _PendingRequest(_Channel())
    response = Response(request, 200, [])
    got = []
    done = response.deliver(got.append)
    response.pause()
    part = b"x" * (256 * 1024)
    for _ in range(2):
        assert response._part(part)
    response._end()
    assert got == [] and request.acks == [] and not done.called  # held back, so the window fills
    response.resume()
    assert got == [part, part] and sum(request.acks) == 2 * len(part) and done.called


def test_cancelling_a_response_tells_the_connector():
    from linchpin_connector.device.bodies import Response

    channel = _Channel()
    request = _PendingRequest(channel)
    response = Response(request, 200, [])
    done = response.deliver(lambda part: None)
    response.cancel()
    assert channel.sent == [{"t": "cancel", "id": 7}] and channel.requests == {}
    assert isinstance(done.result.value, DeviceError)
    done.addErrback(lambda f: None)
    response.cancel()
    assert len(channel.sent) == 1


def test_a_failing_sink_abandons_its_response_not_the_session():
    from linchpin_connector.device.bodies import Response

    channel = _Channel()
    request = _PendingRequest(channel)
    response = Response(request, 200, [])

    def sink(part):
        raise BrokenPipeError(32, "Broken pipe")

    done = response.deliver(sink)
    assert response._part(b"x" * 10) is True  # nothing raised into the message handler
    assert channel.sent == [{"t": "cancel", "id": 7}] and channel.requests == {}
    assert isinstance(done.result.value, BrokenPipeError) and request.acks == []
    done.addErrback(lambda f: None)


# -- loopback, with the real commands ------------------------------------------------


def get(url, path="/", headers=None):
    host = url.split("//", 1)[1]
    conn = http.client.HTTPConnection(host, timeout=30)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    return response.status, response.read()


def test_serve_relays_and_says_which_part_is_away(tmp_path):
    system = System(tmp_path)
    try:
        state = system.pair("ivan")
        serve = Process([os.path.join(BIN, "lmdevice"), "--state", state, "serve", "--listen",
                         "tcp:0:interface=127.0.0.1"])
        url = serve.wait_for(r"serving the intranet at (http://127\.0\.0\.1:\d+)/").group(1)
        serve.wait_for(r"connector online")
        status, page = get(url)
        assert status == 200 and b"Hello, ivan" in page
        assert get(url, headers={"Host": "rebound.example"})[0] == 403

        # an upload larger than one message streams through as the connector acks it
        blob = os.urandom(3 * 1024 * 1024 + 5)
        conn = http.client.HTTPConnection(url.split("//", 1)[1], timeout=30)
        conn.request("POST", "/upload", body=blob, headers={"Content-Type": "application/octet-stream"})
        answer = conn.getresponse()
        assert answer.status == 200
        assert json.loads(answer.read()) == {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}

        # a chunked upload streams too: the app sees every byte
        blob = os.urandom(5 * 1024 * 1024 + 7)
        conn.request("POST", "/upload", body=(blob[i:i + 100_000] for i in range(0, len(blob), 100_000)),
                     headers={"Content-Type": "application/octet-stream"}, encode_chunked=True)
        answer = conn.getresponse()
        assert answer.status == 200
        assert json.loads(answer.read()) == {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}

        # `lmdevice request` on a terminal draws a progress bar for a large body
        size = 6 * 1024 * 1024
        controller, terminal = pty.openpty()
        try:
            done = subprocess.run([os.path.join(BIN, "lmdevice"), "--state", state, "request",
                                   f"/download?size={size}"], stdout=subprocess.PIPE, stderr=terminal, timeout=60)
            os.close(terminal)
            drawn = b""
            while True:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # the terminal's other end is closed: all read
                    break
                if not chunk:
                    break
                drawn += chunk
        finally:
            os.close(controller)
        assert done.returncode == 0 and len(done.stdout) == size
        assert b"100% 6.0 MiB of 6.0 MiB" in drawn and b"[####" in drawn

        # a request waiting on the app when the connector goes: an error page, not a hang
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(get, url, "/slow")
            system.connector.terminate()
            status, page = waiting.result(timeout=60)
        assert status in (502, 503) and (b"not replayed" in page or b"connector is offline" in page), page
        status, page = get(url)
        assert status == 503 and b"connector is offline" in page

        system.gateway.terminate()
        status, page = get(url)
        assert status == 502 and b"gateway cannot be reached" in page
        assert serve.terminate() == 0
    finally:
        system.stop()


def test_cookies_are_sealed_for_this_server_and_opened_for_the_app(local):
    """Before: the app's cookies, Domain stripped, were sent by the browser to
    every other port on 127.0.0.1 in clear, and any cookie of another local
    server was passed on to the app."""
    link, stub = local
    link.answer = FakeResponse(200, [("Set-Cookie", "sid=s3cret; Path=/; HttpOnly; SameSite=Lax"),
                                     ("Set-Cookie", "theme=dark")], [b"ok"])
    response, _ = fetch(stub, "GET", "http://127.0.0.1:8088/")
    jar = [c.split(";")[0] for c in response.headers.getRawHeaders("set-cookie")]
    assert all(c.startswith("lm8088_") for c in jar) and not any("s3cret" in c for c in jar)
    other_server = "lm9999_sid=" + jar[0].split("=", 1)[1]  # another lmdevice serve's name for it
    fetch(stub, "GET", "http://127.0.0.1:8088/next",
          headers={"Cookie": "; ".join(jar + ["local_dev=1", other_server, "lm8088_forged=abc"])})
    cookies = [v for k, v in link.seen[-1][2] if k.lower() == "cookie"]
    assert cookies == ["sid=s3cret; theme=dark"]
    fetch(stub, "GET", "http://127.0.0.1:8088/bare", headers={"Cookie": "local_dev=1"})
    assert [v for k, v in link.seen[-1][2] if k.lower() == "cookie"] == []


def test_a_cookie_sealed_by_another_serve_does_not_open_here():
    from linchpin_connector.device.serve_policy import CookieSeal

    mine, theirs = CookieSeal(8088), CookieSeal(8088)  # same port, another process
    sealed = theirs.set_cookie("sid=1").split(";")[0]
    assert mine.cookie_header(sealed) is None and theirs.cookie_header(sealed) == "sid=1"
    # Before: a nameless cookie (which Chromium keeps) was passed on in clear, Domain and all.
    nameless = mine.set_cookie("nameless-secret; Domain=127.0.0.1")
    assert nameless.startswith("lm8088_=") and "nameless-secret" not in nameless and "Domain" not in nameless
    assert mine.cookie_header(nameless.split(";")[0]) == "nameless-secret"


def test_a_preflight_and_an_image_from_another_page_never_reach_the_device(local):
    link, stub = local
    response, body = fetch(stub, "OPTIONS", "http://127.0.0.1:8088/api",
                           headers={"Origin": "http://127.0.0.1:3000", "Access-Control-Request-Method": "PUT"})
    assert response.code == 403 and not response.headers.getRawHeaders("access-control-allow-origin")
    response, _ = fetch(stub, "GET", "http://127.0.0.1:8088/avatar.png",
                        headers={"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"})
    assert response.code == 403 and link.seen == []
