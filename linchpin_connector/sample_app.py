"""A tiny stand-in for the intranet web app the connector proxies to.

Run ``python -m linchpin_connector.sample_app --listen tcp:8081:interface=127.0.0.1``;
it prints ``sample app listening on HOST:PORT`` once it listens (port 0
picks a free port). It trusts the identity header the connector sets, as a
real intranet app behind the connector would.

Routes:

* ``/`` — an HTML page "Hello, <user>" (``X-Forwarded-User``, else "anonymous") with a
  stylesheet, an image, a visit counter kept in a cookie, a note form and a download link.
* ``/static/style.css``, ``/static/logo.png`` — what that page loads.
* ``/notes`` — GET lists the user's notes; POST (form field ``note``) adds one and
  redirects (303, absolute ``Location``) back to ``/notes``.
* ``/api/whoami`` — JSON ``{"user", "method", "path", "query"}`` (user null when absent).
* ``/download?size=N`` — N bytes (default 8 MiB, at most 1 GiB) of
  :func:`pattern`, written by a push producer, never built in memory; sent as
  an attachment (``pattern-N.bin``).
* ``/upload`` (POST) — reads the body, answers ``{"bytes": n, "sha256": hex}``.
* ``/echo-headers`` — JSON ``{"headers": [[name, value], ...]}`` as received.
* ``/slow`` — never answers; ``/slow?seconds=N`` answers "done" after N seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import struct
import sys
import zlib

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


STYLESHEET = b"""body { font-family: sans-serif; margin: 2rem; background: #f3f6fa; color: #1b2733; }
h1 { color: #0b4f8a; }
img.logo { float: right; }
"""


def _png(size: int = 32) -> bytes:
    """A small PNG logo (blue and white squares), made here so the app needs no files."""
    def chunk(kind, data):
        return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + b"".join(b"\x0b\x4f\x8a" if (x // 8 + y // 8) % 2 == 0 else b"\xff\xff\xff"
                                        for x in range(size)) for y in range(size))
    header = struct.pack("!IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


LOGO = _png()


class Static(resource.Resource):
    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes):
        super().__init__()
        self.body, self.content_type = body, content_type

    def render_GET(self, request):
        request.setHeader(b"Content-Type", self.content_type)
        request.setHeader(b"Cache-Control", b"max-age=60")
        return self.body

    render_HEAD = render_GET


class Hello(resource.Resource):
    isLeaf = True

    def __init__(self, title: str):
        super().__init__()
        self.title = html.escape(title)

    def render_GET(self, request):
        user = html.escape(_user(request) or "anonymous")
        try:
            visits = int(request.getCookie(b"visits") or b"0") + 1
        except ValueError:
            visits = 1
        request.addCookie(b"visits", str(visits).encode(), path=b"/", httpOnly=True, sameSite="lax")
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{self.title}</title>"
                f"<link rel=\"stylesheet\" href=\"/static/style.css\"></head><body>"
                f"<img class=\"logo\" src=\"/static/logo.png\" alt=\"Linchpin logo\" width=\"32\" height=\"32\">"
                f"<h1>Hello, {user}</h1><p id=\"visits\">Visit number {visits}</p>"
                f"<form method=\"post\" action=\"/notes\"><label for=\"note\">Note</label> "
                f"<input id=\"note\" name=\"note\" required> <button type=\"submit\">Save note</button></form>"
                f"<p><a id=\"notes\" href=\"/notes\">Your notes</a> · "
                f"<a id=\"download\" href=\"/download?size=1048576\">Download the report (1 MiB)</a></p>"
                f"</body></html>").encode()

    render_HEAD = render_GET


class Notes(resource.Resource):
    """Each user's notes, in memory: a form that POSTs and redirects."""

    isLeaf = True
    MAX_NOTES = 100

    def __init__(self):
        super().__init__()
        self.notes: dict[str, list[str]] = {}

    def render_GET(self, request):
        user = _user(request) or "anonymous"
        items = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes.get(user, []))
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Notes</title>"
                f"<link rel=\"stylesheet\" href=\"/static/style.css\"></head><body>"
                f"<h1>Notes of {html.escape(user)}</h1><ul id=\"note-list\">{items}</ul>"
                f"<p><a href=\"/\">Home</a></p></body></html>").encode()

    def render_POST(self, request):
        note = request.args.get(b"note", [b""])[0].decode("utf-8", "replace").strip()
        if note:
            notes = self.notes.setdefault(_user(request) or "anonymous", [])
            notes.append(note[:500])
            del notes[: -self.MAX_NOTES]
        # Absolute, as many apps write it: the device's local server turns it into a path.
        host = (request.getHeader(b"host") or b"localhost").decode("latin-1")
        request.setResponseCode(303)
        request.setHeader(b"Location", f"http://{host}/notes".encode("latin-1"))
        return b""


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
        request.setHeader(b"Content-Disposition", f'attachment; filename="pattern-{size}.bin"'.encode())
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
    static = resource.Resource()
    static.putChild(b"style.css", Static(STYLESHEET, b"text/css; charset=utf-8"))
    static.putChild(b"logo.png", Static(LOGO, b"image/png"))
    root.putChild(b"static", static)
    root.putChild(b"notes", Notes())
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
