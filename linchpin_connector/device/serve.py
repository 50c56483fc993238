"""``lmdevice serve``: the intranet app in a local browser, through the device.

A small HTTP server on the device (loopback by default).  Every request a
browser sends it travels through the end-to-end channel to the intranet app,
as the paired user, and the app's answer comes back as the app sent it:
status, headers and a streamed body.  Only these changes are made on the
way back: hop-by-hop headers go, a ``Location`` that would leave this
server becomes a path on it (the tunnel only reaches the intranet app), and
cookies are renamed and sealed for this server alone.  What it lets through
and how it rewrites is :mod:`.serve_policy`: a ``Host`` other than its own,
a request another site made (any method) and a CORS preflight get 403.

A request body larger than one message (or of unknown length) streams: the
relayed request starts once the browser's headers are in, and the body
follows as the socket delivers it, paced by the connector's 1 MiB credit
window (while the window is full the browser's socket is not read), so an
upload of any size holds about the window plus one socket read in memory.
A browser that leaves mid-upload cancels the request.

When the gateway or the connector cannot be reached, the browser gets a short
error page that says which; a request in flight when the session resets fails
(its connection is cut if the response had started) and is never replayed.
"""

from __future__ import annotations

import html
import io

from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.http import RESPONSES
from zope.interface import implementer

from linchpin_common.contract import e2e, messages

from .bodies import BodyStream
from .serve_policy import CookieSeal, HostCheck, cross_site, rewrite_location
from .errors import (ConnectorOffline, DeviceError, DeviceNotAccepted, GatewayUnreachable, PairingRejected, RequestRefused,
                     RequestTimeout, SessionLost)

DEFAULT_LISTEN = "tcp:8088:interface=127.0.0.1"
# Not forwarded in either direction (RFC 9110 section 7.6.1), plus what the
# connector sets itself.
HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                        "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"))
REQUEST_DROPPED = HOP_BY_HOP | {"host", "content-length", "origin", "cookie"}

# What went wrong -> (HTTP status, page title). The connector's `err` codes first.
_REFUSALS = {
    messages.FORBIDDEN: (403, "The intranet connector refused this address"),
    messages.BAD_REQUEST: (400, "The intranet connector refused this request"),
    messages.BACKEND_UNREACHABLE: (502, "The intranet app cannot be reached"),
    messages.TIMEOUT: (504, "The intranet app did not answer in time"),
    messages.TOO_LARGE: (413, "The request is too large"),
    messages.BUSY: (503, "Too many requests at once"),
}


def error_page(failure_or_error) -> tuple[int, str, str]:
    """(status, title, explanation) for an error of the device library."""
    error = getattr(failure_or_error, "value", failure_or_error)
    if isinstance(error, GatewayUnreachable):
        return 502, "The gateway cannot be reached", str(error)
    if isinstance(error, ConnectorOffline):
        return 503, "The intranet connector is offline", str(error)
    if isinstance(error, (PairingRejected, DeviceNotAccepted)):
        return 403, "This device is no longer paired", str(error)
    if isinstance(error, RequestTimeout):
        return 504, "No answer in time", str(error)
    if isinstance(error, SessionLost):
        return 502, "The connection to the intranet was reset", str(error)
    if isinstance(error, RequestRefused):
        status, title = _REFUSALS.get(error.code, (502, "The intranet connector refused this request"))
        return status, title, str(error)
    if isinstance(error, DeviceError):
        return 502, "The device cannot reach the intranet", str(error)
    return 500, "Internal error", "the device failed to relay this request"


def render_error(request, status: int, title: str, text: str) -> bytes:
    request.setResponseCode(status)
    request.responseHeaders.setRawHeaders(b"Content-Type", [b"text/html; charset=utf-8"])
    request.responseHeaders.setRawHeaders(b"Cache-Control", [b"no-store"])
    request.responseHeaders.setRawHeaders(b"Content-Security-Policy", [b"default-src 'none'"])
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>"
            f"<p id=\"reason\">{html.escape(text)}</p></body></html>").encode()


class LocalProxy(resource.Resource):
    """Every path, every method: through the device to the intranet app."""

    isLeaf = True
    log = Logger()

    def __init__(self, device, host_check: HostCheck):
        """``device``: the :class:`~.client.Device` (it reopens its connection to
        the gateway by itself when a request finds it gone)."""
        super().__init__()
        self.device = device
        self.serve_at(host_check)

    def serve_at(self, host_check: HostCheck) -> None:
        """The address it answers under, and so its cookies' scope."""
        self.host_check = host_check
        self.cookies = CookieSeal(host_check.port)

    def begin(self, request) -> BodyStream | None:
        """A :class:`StreamingRequest`'s headers are in: start relaying it, and
        return the stream its body goes to (None: it will be refused, its
        body is dropped)."""
        host = request.getHeader(b"host")
        if not self.host_check(host) or cross_site(request, host):
            return None
        upload = BodyStream()
        # The window full, the browser's socket is not read until acks come.
        upload.register_producer(request.channel.transport)
        request.notifyFinish().addErrback(lambda _: upload.abort())  # the browser left: cancel
        request.relaying = defer.ensureDeferred(self._forward(request, upload)).addErrback(
            lambda f: self.log.failure("relaying a request failed", f))
        return upload

    def render(self, request):
        if getattr(request, "relaying", None) is not None:
            return server.NOT_DONE_YET  # started at its headers (begin)
        host = request.getHeader(b"host")
        if not self.host_check(host):
            return render_error(request, 403, "Unknown host name",
                                "this local server answers only to the address it listens on")
        if cross_site(request, host):
            return render_error(request, 403, "Cross-site request refused",
                                "another web site (or a page opened from elsewhere) tried to send this request "
                                "through your device; open the address yourself")
        defer.ensureDeferred(self._forward(request)).addErrback(
            lambda f: self.log.failure("relaying a request failed", f))
        return server.NOT_DONE_YET

    async def _forward(self, request, upload: BodyStream | None = None) -> None:
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        received = getattr(request, "received", None)
        headers = [(k.decode("latin-1"), v.decode("latin-1"))
                   for k, values in request.requestHeaders.getAllRawHeaders() for v in values
                   if k.decode("latin-1").lower() not in REQUEST_DROPPED]
        for value in request.requestHeaders.getRawHeaders(b"cookie", []):
            opened = self.cookies.cookie_header(value.decode("latin-1"))
            if opened is not None:
                headers.append(("Cookie", opened))
        try:
            # Bytes as they came: the connector refuses a path that is not printable ASCII.
            response = await self.device.request(request.method.decode("latin-1"), request.uri.decode("latin-1"),
                                               headers, _body(request) if upload is None else upload)
        except Exception as e:
            if upload is not None:
                upload.discard()  # the rest of the body is read and dropped
                await received  # the answer can only be written once the body is in
            if not gone:
                status, title, text = error_page(e)
                if status == 500:
                    self.log.failure("relaying a request failed")
                request.write(render_error(request, status, title, text))
                request.finish()
            return
        if upload is not None and not received.called:
            upload.discard()  # the app answered before the whole body was sent
            await received
        if gone:
            response.cancel()
            return
        request.notifyFinish().addErrback(lambda _: response.cancel())  # the browser left mid-body
        request.setResponseCode(response.status, RESPONSES.get(response.status, b"Unknown"))
        for name, value in response.headers:
            lower = name.lower()
            if lower in HOP_BY_HOP:
                continue
            if lower == "location":
                value = rewrite_location(value)
            elif lower == "set-cookie":
                value = self.cookies.set_cookie(value)
            request.responseHeaders.addRawHeader(name.encode("latin-1"), value.encode("latin-1", "replace"))

        def write(part: bytes) -> None:
            if not gone:
                request.write(part)

        # The browser sets the pace: while its connection's buffer is full the
        # parts wait unacked, and the connector stops reading the backend.
        request.registerProducer(_Pace(response), True)
        try:
            await response.deliver(write)
        except Exception as e:
            if not gone:
                # The response had started: the browser must see it broken, not complete.
                self.log.info("a response was cut: {error}", error=str(e))
                request.unregisterProducer()
                request.channel.transport.abortConnection()
            return
        if not gone:
            request.unregisterProducer()
            request.finish()


@implementer(IPushProducer)
class _Pace:
    """The browser's connection drives the device's response: full buffer,
    pause; drained, resume."""

    def __init__(self, response):
        self.response = response

    def pauseProducing(self):
        self.response.pause()

    def resumeProducing(self):
        self.response.resume()

    def stopProducing(self):
        self.response.cancel()


def _body(request) -> bytes:
    """The body of a request not streamed: none, or one that fits one message."""
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    return content.read()


class StreamingRequest(server.Request):
    """A request relayed from its headers on (twisted.web would otherwise
    read the whole body first): :meth:`LocalProxy.begin` starts it in
    :meth:`gotLength` and each part of the body goes to the device's
    :class:`BodyStream` as the channel decodes it (Content-Length or chunked).

    A body whose Content-Length fits one message (a form post) is read
    first, in memory, and goes inside the ``req``: the connector then gives
    the app its length, where a streamed body reaches the app chunked, which
    some application servers do not read.  A request without a body is
    handled as twisted.web does."""

    relaying: defer.Deferred | None = None  # the relay, started at the headers
    received: defer.Deferred | None = None  # fires once the body is in (or the browser left)
    upload: BodyStream | None = None

    def gotLength(self, length):
        if length is not None and length <= e2e.MAX_BODY_CHUNK:
            self.content = io.BytesIO()  # (twisted.web would take a temporary file above 100 kB)
            return
        self.content = io.BytesIO()  # stays empty: the body is relayed, not kept
        self.received = defer.Deferred()
        self.method, self.uri = self.channel._command, self.channel._path
        self.upload = self.channel.site.resource.begin(self)

    def handleContentChunk(self, data):
        if self.received is None:
            super().handleContentChunk(data)
        elif self.upload is not None:
            self.upload.write(data)

    def requestReceived(self, command, path, version):
        if self.upload is not None:
            self.upload.end()
        super().requestReceived(command, path, version)
        if self.received is not None and not self.received.called:
            self.received.callback(None)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if self.received is not None and not self.received.called:
            self.received.callback(None)


def make_site(proxy: LocalProxy, reactor=None) -> server.Site:
    site = server.Site(proxy, reactor=reactor)
    site.requestFactory = StreamingRequest
    site.displayTracebacks = False
    return site


async def listen(reactor, device, endpoint: str = DEFAULT_LISTEN):
    """Serve the intranet through ``device`` on ``endpoint``; returns the listening port."""
    proxy = LocalProxy(device, HostCheck("127.0.0.1", 0))
    site = make_site(proxy, reactor)
    port = await endpoints.serverFromString(reactor, endpoint).listen(site)
    address = port.getHost()  # port 0 picks one: the Host check needs the real one
    proxy.serve_at(HostCheck(address.host, address.port))
    return port
