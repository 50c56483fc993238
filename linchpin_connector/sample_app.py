"""A tiny stand-in for the intranet web app the connector proxies to.

Run ``python -m linchpin_connector.sample_app --listen tcp:8081:interface=127.0.0.1``;
it prints ``sample app listening on HOST:PORT`` once it listens (port 0
picks a free port). It trusts the identity header the connector sets, as a
real intranet app behind the connector would.

Routes:

* ``/`` — an HTML page "Hello, <user>" (``X-Forwarded-User``, else "anonymous").
* ``/api/whoami`` — JSON ``{"user", "method", "path", "query"}`` (user null when absent).
* ``/download?size=N`` — N bytes (default 8 MiB, at most 1 GiB) of
  :func:`pattern`, written by a push producer, never built in memory.
* ``/upload`` (POST) — reads the body, answers ``{"bytes": n, "sha256": hex}``.
* ``/echo-headers`` — JSON ``{"headers": [[name, value], ...]}`` as received.
* ``/slow`` — never answers; ``/slow?seconds=N`` answers "done" after N seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import sys

from twisted.internet import defer, endpoints, task
from twisted.internet.interfaces import IPushProducer
from twisted.web import pages, resource, server
from zope.interface import implementer

DEFAULT_DOWNLOAD = 8 * 1024 * 1024
MAX_DOWNLOAD = 1024 * 1024 * 1024
BLOCK = 65536
_FILL = bytes(range(256)) * (BLOCK // 256)

USER_HEADER = b"X-Forwarded-User"


def block(index: int) -> bytes:
    """Block ``index`` of the download stream: its number (8 bytes, big
    endian) then bytes counting 0..255 — reordered or shifted data shows."""
    return index.to_bytes(8, "big") + _FILL[8:]


def pattern(size: int):
    """The first ``size`` bytes of the download stream, block by block."""
    for index in range((size + BLOCK - 1) // BLOCK):
        yield block(index)[: min(BLOCK, size - index * BLOCK)]


def _user(request) -> str | None:
    value = request.getHeader(USER_HEADER)
    return value.decode("utf-8", "replace") if value is not None else None


def _json(request, data, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(data).encode()


class Hello(resource.Resource):
    isLeaf = True

    def __init__(self, title: str):
        super().__init__()
        self.title = html.escape(title)

    def render_GET(self, request):
        user = html.escape(_user(request) or "anonymous")
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return (f"<!doctype html><html><head><title>{self.title}</title></head>"
                f"<body><h1>Hello, {user}</h1></body></html>").encode()

    render_HEAD = render_GET


class WhoAmI(resource.Resource):
    isLeaf = True

    def render(self, request):
        path, _, query = request.uri.partition(b"?")
        return _json(request, {"user": _user(request), "method": request.method.decode("latin-1"),
                               "path": path.decode("latin-1"), "query": query.decode("latin-1")})


@implementer(IPushProducer)
class _PatternProducer:
    def __init__(self, request, size: int):
        self.request = request
        self.size = size
        self.sent = 0
        self.paused = False
        self.stopped = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while not self.paused and not self.stopped and self.sent < self.size:
            index = self.sent // BLOCK
            chunk = block(index)[: min(BLOCK, self.size - self.sent)]
            self.sent += len(chunk)
            self.request.write(chunk)  # may call pauseProducing
        if self.sent >= self.size and not self.stopped:
            self.stopped = True
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self):
        self.stopped = True


class Download(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        try:
            size = int(request.args.get(b"size", [DEFAULT_DOWNLOAD])[0])
        except ValueError:
            size = -1
        if not 0 <= size <= MAX_DOWNLOAD:
            return _json(request, {"error": "size must be 0..1 GiB"}, 400)
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Content-Length", str(size).encode())
        producer = _PatternProducer(request, size)
        request.notifyFinish().addErrback(lambda _: producer.stopProducing())
        request.registerProducer(producer, True)
        producer.resumeProducing()
        return server.NOT_DONE_YET


class Upload(resource.Resource):
    isLeaf = True

    def render_POST(self, request):
        digest, count = hashlib.sha256(), 0
        request.content.seek(0)
        for chunk in iter(lambda: request.content.read(BLOCK), b""):
            digest.update(chunk)
            count += len(chunk)
        return _json(request, {"bytes": count, "sha256": digest.hexdigest()})

    render_PUT = render_POST


class EchoHeaders(resource.Resource):
    isLeaf = True

    def render(self, request):
        pairs = [[name.decode("latin-1"), value.decode("latin-1")]
                 for name, values in request.requestHeaders.getAllRawHeaders() for value in values]
        return _json(request, {"headers": pairs})


class Slow(resource.Resource):
    isLeaf = True

    def __init__(self, clock=None):
        super().__init__()
        self.clock = clock

    def render_GET(self, request):
        seconds = request.args.get(b"seconds")
        if seconds:
            try:
                delay = float(seconds[0])
            except ValueError:
                return _json(request, {"error": "seconds must be a number"}, 400)
            clock = self.clock
            if clock is None:
                from twisted.internet import reactor as clock
            call = clock.callLater(delay, lambda: (request.write(b"done"), request.finish()))
            request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
        return server.NOT_DONE_YET


class _Root(resource.Resource):
    def getChild(self, path, request):
        return pages.notFound()


def make_site(title: str = "Linchpin intranet (sample)", *, clock=None) -> server.Site:
    """The sample app; ``clock`` (default: the reactor) drives ``/slow?seconds``."""
    root = _Root()
    root.putChild(b"", Hello(title))
    api = resource.Resource()
    api.putChild(b"whoami", WhoAmI())
    root.putChild(b"api", api)
    root.putChild(b"download", Download())
    root.putChild(b"upload", Upload())
    root.putChild(b"echo-headers", EchoHeaders())
    root.putChild(b"slow", Slow(clock))
    site = server.Site(root)
    site.displayTracebacks = False
    return site


async def _serve(reactor, listen: str, title: str) -> None:
    port = await endpoints.serverFromString(reactor, listen).listen(make_site(title))
    address = port.getHost()
    print(f"sample app listening on {address.host}:{address.port}", flush=True)
    await defer.Deferred()  # until the process is stopped


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m linchpin_connector.sample_app", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="tcp:8081:interface=127.0.0.1",
                        help="Twisted server endpoint (default: %(default)s)")
    parser.add_argument("--title", default="Linchpin intranet (sample)")
    args = parser.parse_args(argv)
    task.react(lambda reactor: defer.ensureDeferred(_serve(reactor, args.listen, args.title)))


if __name__ == "__main__":
    main(sys.argv[1:])
