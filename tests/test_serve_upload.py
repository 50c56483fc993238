"""``lmdevice serve`` streams uploads: the whole system in memory (a browser
on a StringTransport, the real local server, a real Device, gateway and
connector, the sample app behind it), so the bytes held at each step can be
counted."""

from __future__ import annotations

import hashlib
import json

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from linchpin_common.contract import e2e
from linchpin_connector.device.serve import HostCheck, LocalProxy, make_site

from tests.test_inmemory_system import System, run

READ = 65536  # what one socket read hands the HTTP channel at most
HEAD = b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1:8088\r\nContent-Type: application/octet-stream\r\n"


@pytest.fixture
def system(make_gateway, tmp_path):
    s = System(make_gateway(), tmp_path)
    yield s
    s.stop()


class Browser:
    """One connection to the local server; it sends only while its socket is read."""

    def __init__(self, system, device):
        self.system = system
        site = make_site(LocalProxy(device, HostCheck("127.0.0.1", 8088)), reactor=system.reactor)
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)
        self.pauses = self.resumes = 0
        self.peak = 0  # the most body bytes the device side held at once

    @property
    def request(self):
        """The request being received (the HTTP/1.1 channel behind the protocol)."""
        return self.channel._channel.requests[-1]

    @property
    def paused(self) -> bool:
        return self.transport.producerState == "paused"

    def held(self) -> int:
        """Body bytes read from the browser and not yet acked by the connector."""
        request = self.request
        stream = getattr(request, "upload", None)
        if stream is None:
            return 0
        assert request.content.tell() == 0  # twisted.web keeps nothing
        inflight = stream._request.upload.unacked if stream._request is not None else 0
        return stream.held + inflight

    def send(self, data: bytes) -> None:
        """Hand ``data`` to the server in socket reads as fast as it reads
        them; the rest of the system moves only while the server does not read."""
        for i in range(0, len(data), READ):
            while self.paused:
                self.pauses += 1
                self.system.pump()
                assert not self.paused, "acks came but reading was not resumed"
                self.resumes += 1
            self.channel.dataReceived(data[i:i + READ])
            self.peak = max(self.peak, self.held())

    def answer(self) -> tuple[bytes, bytes]:
        self.system.pump()
        raw = self.transport.value()
        head, _, body = raw.partition(b"\r\n\r\n")
        return head, body


def chunked(blob: bytes, size: int = 100_000) -> bytes:
    out = [b"%x\r\n%s\r\n" % (len(blob[i:i + size]), blob[i:i + size]) for i in range(0, len(blob), size)]
    return b"".join(out) + b"0\r\n\r\n"


def connected(system, user="carol"):
    device = system.device(system.add_device(user))
    run(system, device.open())
    run(system, device.handshake())
    return device


def test_a_20_mib_chunked_upload_streams_within_the_window(system):
    device = connected(system)
    browser = Browser(system, device)
    blob = bytes(range(251)) * (20 * 1024 * 1024 // 251 + 1)
    blob = blob[:20 * 1024 * 1024]
    browser.send(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    assert browser.request.relaying is not None  # started at the headers, before any body
    browser.send(chunked(blob))
    head, body = browser.answer()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(body) == {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    # never the whole body: the window, plus what one socket read brought in
    assert 0 < browser.peak <= e2e.CREDIT_WINDOW + READ
    assert browser.pauses > 0 and browser.resumes == browser.pauses  # the full window stopped the reads


def test_reading_pauses_on_a_full_window_and_resumes_on_acks(system):
    device = connected(system)
    browser = Browser(system, device)
    held_back = []
    blob = b"u" * (3 * 1024 * 1024)
    browser.send(HEAD + b"Content-Length: %d\r\n\r\n" % len(blob))
    request = browser.request
    stream = request.upload
    sent = 0
    publish = device._publish
    device._publish = held_back.append  # nothing reaches the connector, so no ack comes back
    try:
        while not browser.paused:
            browser.channel.dataReceived(blob[sent:sent + READ])
            sent += READ
        assert stream._request.upload.full and browser.held() <= e2e.CREDIT_WINDOW + READ
    finally:
        device._publish = publish
    for payload in held_back:
        publish(payload)
    system.pump()  # the connector receives, the app reads, acks come back
    assert not browser.paused and stream._request.upload.unacked < e2e.CREDIT_WINDOW
    browser.send(blob[sent:])
    head, body = browser.answer()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(body)["sha256"] == hashlib.sha256(blob).hexdigest()


def test_a_content_length_upload_goes_through(system):
    device = connected(system)
    browser = Browser(system, device)
    blob = bytes(range(256)) * 12289  # about 3 MiB, not a multiple of a read
    browser.send(HEAD + b"Content-Length: %d\r\n\r\n" % len(blob) + blob)
    head, body = browser.answer()
    assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Length: " in head
    assert json.loads(body) == {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    assert browser.peak <= e2e.CREDIT_WINDOW + READ


def test_a_browser_that_leaves_mid_upload_cancels_the_request(system):
    device = connected(system)
    browser = Browser(system, device)
    sent = []
    session = device._session
    real_send = session.send
    session.send = lambda header, body=b"": (sent.append(header), real_send(header, body))[1]
    browser.send(HEAD + b"Content-Length: %d\r\n\r\n" % (8 * 1024 * 1024) + b"x" * (2 * 1024 * 1024))
    request_id = sent[0]["id"]
    assert sent[0]["t"] == "req" and not any(h.get("end") for h in sent)
    browser.channel.connectionLost(Failure(ConnectionDone("the browser left")))
    assert sent[-1] == {"t": "cancel", "id": request_id}
    assert session.requests == {}
    system.pump()
    assert browser.transport.value() == b""  # nothing answered, nothing replayed
    assert [h["t"] for h in sent].count("req") == 1
    # the device goes on: the next request works
    browser = Browser(system, device)
    browser.send(HEAD + b"Content-Length: 3\r\n\r\nabc")
    head, body = browser.answer()
    assert head.startswith(b"HTTP/1.1 200 ") and json.loads(body)["bytes"] == 3


def test_a_small_body_goes_in_the_req_and_reaches_the_app_with_its_length(system):
    """A form post (a body that fits one message) is not streamed: it goes
    inside the ``req`` (``end: true``), so the connector gives the app a
    Content-Length, not a chunked body that some application servers do not
    read."""
    device = connected(system)
    browser = Browser(system, device)
    sent = []
    session = device._session
    real_send = session.send
    session.send = lambda header, body=b"": (sent.append((header, bytes(body))), real_send(header, body))[1]
    form = b"title=hello&text=" + b"x" * 1000
    browser.send(b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1:8088\r\n"
                 b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n" % len(form) + form)
    head, body = browser.answer()
    assert head.startswith(b"HTTP/1.1 200 ")
    (req, req_body), = [(h, b) for h, b in sent if h["t"] == "req"]
    assert req["end"] is True and req_body == form
    assert not [h for h, _ in sent if h["t"] == "body"]
    assert json.loads(body) == {"bytes": len(form), "sha256": hashlib.sha256(form).hexdigest()}
