"""The self-service pairing page over HTTP (twisted.web): it translates, the desk decides.

Meant to sit behind the company's SSO reverse proxy, which names the user in
one header (``X-Forwarded-User`` by default); nothing else from the browser
is trusted.  Routes, all relative so the proxy may mount the page under any
prefix:

- ``GET /``: the page (the user's devices, the pair button, the QR code of
  a device still to be paired).
- ``GET /devices``: the live part of that page alone (the script swaps it in).
- ``GET /events``: server-sent events, one ``devices`` event per change.
- ``POST /pair``, ``POST /remove`` (``device_id``), ``POST /replace``
  (``device_id``): need the form's CSRF token; answer 303 back to the page,
  so they work without JavaScript.  ``replace`` removes a pending device
  whose pairing link this connector does not have (another connector of the
  instance made it, or this one before a restart: the setup key is never
  stored) and makes a new one in its place.
- ``GET /static/...``: the stylesheet and the script (no inline script, no
  external asset: ``Content-Security-Policy: default-src 'self'``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import secrets
from importlib import resources

from urllib.parse import quote, urlsplit

import segno
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from ..config import USER_HEADER
from ..enrolment import valid_user
from .desk import NotYourDevice, Pairing, PairingDesk, TooManyPending

CSP = b"default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
SECURITY_HEADERS = {
    b"Content-Security-Policy": CSP,
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"X-Frame-Options": b"DENY",
}
HEARTBEAT = 25.0  # seconds between SSE comments, so proxies keep the stream open
MAX_STREAMS_PER_USER = 8
# Event streams open in all: each holds a socket for as long as a page is
# open, and the connector's unit allows 1,024 open files for everything.
MAX_STREAMS = 256


def host_name(header: bytes | None) -> str | None:
    """The name of a ``Host`` header, lower case, without its port or a
    final dot; None when there is none or it cannot be read."""
    if not header:
        return None
    try:
        text = header.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):  # an IPv6 literal
        name, bracket, _ = text[1:].partition("]")
        return name if bracket else None
    name = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    return name.rstrip(".") or None
STATE_TEXT = {"pending": "waiting to be paired", "paired": "paired", "connected": "connected now"}
STATIC = {
    b"pairing.css": b"text/css; charset=utf-8",
    b"pairing.js": b"text/javascript; charset=utf-8",
}
# The phone app under app/ (its files as shipped in static/app/), by suffix.
APP_TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
             ".css": b"text/css; charset=utf-8", ".png": b"image/png",
             ".webmanifest": b"application/manifest+json"}


def _headers(request, content_type: bytes = b"text/html; charset=utf-8", cache: bytes = b"no-store") -> None:
    for name, value in SECURITY_HEADERS.items():
        request.responseHeaders.setRawHeaders(name, [value])
    request.responseHeaders.setRawHeaders(b"Content-Type", [content_type])
    request.responseHeaders.setRawHeaders(b"Cache-Control", [cache])


def _page(title: str, body: str) -> bytes:
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><link rel=\"stylesheet\" href=\"static/pairing.css\">"
            f"<script src=\"static/pairing.js\" defer></script></head><body>{body}</body></html>").encode()


def _message_page(request, status: int, title: str, text: str, back: bool = True) -> bytes:
    request.setResponseCode(status)
    _headers(request)
    link = '<p><a href="./">Back to your devices</a></p>' if back else ""
    return _page(title, f"<main><h1>{html.escape(title)}</h1><p id=\"message\">{html.escape(text)}</p>{link}</main>")


class Csrf:
    """A token per user, an HMAC under a key made at start-up: a page from
    another site cannot know it.  Tokens die with the process (the page then
    asks for a reload)."""

    def __init__(self, key: bytes | None = None):
        self.key = key or secrets.token_bytes(32)

    def token(self, user: str) -> str:
        mac = hmac.new(self.key, b"lmconnector pairing page\0" + user.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def check(self, user: str, given: bytes | None) -> bool:
        return given is not None and hmac.compare_digest(self.token(user).encode(), given)


def qr_svg(uri: str) -> str:
    """The QR code as inline SVG that scales with the page (a viewBox, no fixed size)."""
    svg = segno.make(uri, error="m").svg_inline(scale=5, border=4, title="Pairing QR code", dark="#000",
                                                 light="#fff", svgclass="qr", omitsize=True)
    return svg.replace("<svg ", '<svg role="img" aria-label="Pairing QR code" ', 1)


class PairingPage(resource.Resource):
    """The root: finds the user, then hands the request to a route."""

    log = Logger()

    def __init__(self, desk: PairingDesk, user_header: str = USER_HEADER, clock=None, csrf: Csrf | None = None,
                 hosts: tuple[str, ...] = ()):
        super().__init__()
        self.desk = desk
        # Host names the page answers besides its listening address and
        # localhost (--web-host): any other is a DNS-rebinding page, or
        # someone who should not be here.
        self.hosts = frozenset(["localhost"] + [h.lower().rstrip(".") for h in hosts])
        self.user_header = user_header.encode("ascii")
        self.clock = clock
        self.csrf = csrf or Csrf()
        self.streams: dict[str, int] = {}
        self.static = {name: resources.files(__package__).joinpath("static", name.decode()).read_bytes()
                       for name in STATIC}
        folder = resources.files(__package__).joinpath("static", "app")
        self.app = {f.name.encode(): (f.read_bytes(), APP_TYPES[suffix])
                    for f in folder.iterdir() if (suffix := "." + f.name.rpartition(".")[2]) in APP_TYPES}
        key = getattr(desk, "connector_public_key", None)
        self.connector_key = base64.urlsafe_b64encode(key).rstrip(b"=") if key else b""
        url = getattr(getattr(desk, "api", None), "url", None)
        gateway = urlsplit(url) if url else None
        # The app talks to the gateway: its setup call, then the WebSocket.
        self.app_connect = (f" {gateway.scheme}://{gateway.netloc} {'wss' if gateway.scheme == 'https' else 'ws'}://"
                            f"{gateway.netloc}" if gateway else "")

    def getChild(self, path, request):
        return self

    def render(self, request):
        if not self._host_ok(request):
            return _message_page(request, 421, "Wrong address",
                                 "This page is not served under that name.", back=False)
        route = b"/".join(request.prepath)
        method = request.method
        if route == b"app" or route.startswith(b"app/"):
            # The phone app's files are the same for everyone and hold no
            # secret; they are served without sign-in because a browser
            # fetches a module service worker and its imports without
            # cookies, so an SSO in front could never let them through.
            return self._app(request, method)
        user = self._user(request)
        if user is None:
            return _message_page(request, 401, "Sign-in required",
                                 "Open this page through the company's single sign-on: it did not say who you are.",
                                 back=False)
        if route.startswith(b"static/") and method in (b"GET", b"HEAD") and request.prepath[1] in STATIC \
                and len(request.prepath) == 2:
            name = request.prepath[1]
            _headers(request, STATIC[name], cache=b"no-cache")
            return self.static[name]
        handlers = {(b"", b"GET"): self._show, (b"", b"HEAD"): self._show, (b"devices", b"GET"): self._fragment,
                    (b"events", b"GET"): self._events, (b"pair", b"POST"): self._pair,
                    (b"remove", b"POST"): self._remove, (b"replace", b"POST"): self._replace}
        handler = handlers.get((route, method))
        if handler is None:
            if route in (b"", b"devices", b"events", b"pair", b"remove", b"replace"):
                request.setHeader(b"Allow", b"POST" if route in (b"pair", b"remove", b"replace") else b"GET, HEAD")
                return _message_page(request, 405, "Not allowed", "This address does not take that method.")
            return _message_page(request, 404, "Not found", "There is no such page.")
        if method == b"POST" and not self._form_ok(request, user):
            return _message_page(request, 403, "Form expired",
                                 "This form is out of date or did not come from this page: reload the page and try again.")
        return handler(request, user)

    def _app(self, request, method):
        """The phone app's files; ``app`` itself sends the browser to ``app/``
        (the app's links are relative)."""
        if method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return _message_page(request, 405, "Not allowed", "This address does not take that method.")
        if len(request.prepath) == 1:
            request.setResponseCode(301)
            request.setHeader(b"Location", b"app/")
            return b""
        name = b"/".join(request.prepath[1:]) or b"index.html"
        found = self.app.get(name)
        if found is None:
            return _message_page(request, 404, "Not found", "There is no such page.")
        body, content_type = found
        _headers(request, content_type, cache=b"no-cache")
        if name == b"index.html":
            # The app refuses a pairing link that names another connector.
            body = body.replace(b'<meta name="linchpin-connector-key" content="">',
                                b'<meta name="linchpin-connector-key" content="' + self.connector_key + b'">', 1)
        if name in (b"index.html", b"sw.js"):
            request.responseHeaders.setRawHeaders(b"Content-Security-Policy", [
                (f"default-src 'self'; connect-src 'self'{self.app_connect}; img-src 'self'; "
                 "base-uri 'none'; form-action 'self'; frame-ancestors 'none'").encode()])
        if name == b"sw.js":
            # The worker may take the whole origin: when this page is served at
            # a path of the intranet app's origin, it brings the intranet's own
            # URLs to the phone from outside (static/app/sw.js).
            request.responseHeaders.setRawHeaders(b"Service-Worker-Allowed", [b"/"])
        return body

    # -- who and whether ---------------------------------------------------------------

    def _host_ok(self, request) -> bool:
        raw = request.requestHeaders.getRawHeaders(b"host")
        name = host_name(raw[0]) if raw and len(raw) == 1 else None
        if name is None:
            return False
        return name in self.hosts or name == getattr(request.getHost(), "host", None)

    def _user(self, request) -> str | None:
        raw = request.requestHeaders.getRawHeaders(self.user_header)
        if not raw or len(raw) != 1:
            return None
        try:
            user = raw[0].decode("utf-8").strip()
        except UnicodeDecodeError:
            return None
        if len(user) > 256 or not valid_user(user):
            return None
        return user

    def _form_ok(self, request, user: str) -> bool:
        if request.getHeader(b"sec-fetch-site") in (b"cross-site", b"same-site"):
            return False
        tokens = request.args.get(b"csrf_token", [])
        return len(tokens) == 1 and self.csrf.check(user, tokens[0])

    # -- routes ------------------------------------------------------------------------

    def _later(self, request, work) -> int:
        """Run ``work()`` (a coroutine) and write what it returns; errors become pages."""
        gone = []
        request.notifyFinish().addErrback(gone.append)

        async def run():
            try:
                body = await work()
            except Exception:
                self.log.failure("the pairing page failed")
                body = _message_page(request, 502, "Try again later",
                                     "The gateway or the connector's state could not be reached.")
            if not gone:
                request.write(body)
                request.finish()

        defer.ensureDeferred(run())
        return server.NOT_DONE_YET

    def _show(self, request, user: str):
        async def work():
            _headers(request)
            token = html.escape(self.csrf.token(user))
            live = await self._live(user)
            body = (f"<header><h1>Mobile access</h1><p>Signed in as <strong>{html.escape(user)}</strong></p></header>"
                    f"<main><p>Pair your phone to reach the intranet from outside. Each device is yours only; "
                    f"remove one at once if it is lost.</p>"
                    f"<form method=\"post\" action=\"pair\" class=\"pair\">"
                    f"<input type=\"hidden\" name=\"csrf_token\" value=\"{token}\">"
                    f"<button type=\"submit\" id=\"pair-button\">Pair a new device</button></form>"
                    f"<section id=\"live\" aria-live=\"polite\">{live}</section>"
                    f"<noscript><p>Without JavaScript this page does not update itself: "
                    f"<a href=\"./\">reload it</a> to see changes.</p></noscript></main>")
            return _page("Mobile access: your devices", body)
        return self._later(request, work)

    def _fragment(self, request, user: str):
        async def work():
            _headers(request)
            return (await self._live(user)).encode()
        return self._later(request, work)

    async def _live(self, user: str) -> str:
        token = html.escape(self.csrf.token(user))
        devices = await self.desk.devices(user)
        pairing = self.desk.pairing(devices)
        parts = []
        if pairing is not None:
            parts.append(self._pairing_html(pairing))
        parts.append("<h2 id=\"devices-title\">Your devices</h2>")
        if not devices:
            parts.append("<p id=\"no-devices\">You have no devices yet.</p>")
        else:
            parts.append("<ul class=\"devices\" aria-labelledby=\"devices-title\">")
            linked = self.desk.linked()
            for device in devices:
                short = device.device_id[:8]
                if device.state == "pending" and device.device_id not in linked:
                    parts.append(
                        f"<li class=\"device\" data-device-id=\"{device.device_id}\" data-state=\"{device.state}\">"
                        f"<span class=\"name\">Device {short}</span> "
                        f"<span class=\"state state-{device.state}\">{STATE_TEXT[device.state]}; its link is not "
                        f"shown here</span>"
                        f"<form method=\"post\" action=\"replace\" class=\"replace\">"
                        f"<input type=\"hidden\" name=\"csrf_token\" value=\"{token}\">"
                        f"<input type=\"hidden\" name=\"device_id\" value=\"{device.device_id}\">"
                        f"<button type=\"submit\" aria-label=\"New pairing link for device {short}\">New pairing "
                        f"link</button></form></li>")
                    continue
                link = ""
                if device.state == "pending" and device.device_id in linked:
                    target = html.escape("app/#pair=" + quote(self.desk.pairings[device.device_id].uri, safe=""))
                    link = (f"<a class=\"app-link\" data-app-link=\"{target}\" href=\"{target}\">"
                            f"Pair this phone's browser</a> ")
                parts.append(
                    f"<li class=\"device\" data-device-id=\"{device.device_id}\" data-state=\"{device.state}\">"
                    f"<span class=\"name\">Device {short}</span> "
                    f"<span class=\"state state-{device.state}\">{STATE_TEXT[device.state]}</span> {link}"
                    f"<form method=\"post\" action=\"remove\" class=\"remove\">"
                    f"<input type=\"hidden\" name=\"csrf_token\" value=\"{token}\">"
                    f"<input type=\"hidden\" name=\"device_id\" value=\"{device.device_id}\">"
                    f"<button type=\"submit\" aria-label=\"Remove device {short}\">Remove</button></form></li>")
            parts.append("</ul>")
        return "".join(parts)

    def _pairing_html(self, pairing: Pairing) -> str:
        uri = html.escape(pairing.uri)
        return (f"<div class=\"pairing\" data-pairing-uri=\"{uri}\">"
                f"<h2>Scan this code with the app</h2>"
                f"<figure>{qr_svg(pairing.uri)}<figcaption>This code pairs one device to your account. "
                f"It stays here until the device has paired; show it to no one.</figcaption></figure>"
                f"<label for=\"pairing-uri\">Or copy this pairing link into the app</label>"
                f"<input id=\"pairing-uri\" type=\"text\" readonly value=\"{uri}\"></div>")

    def _pair(self, request, user: str):
        return self._act(request, lambda: self.desk.pair(user))

    def _remove(self, request, user: str):
        return self._act(request, lambda: self.desk.remove(user, self._device_id(request)))

    def _replace(self, request, user: str):
        return self._act(request, lambda: self.desk.replace(user, self._device_id(request)))

    @staticmethod
    def _device_id(request) -> str:
        ids = request.args.get(b"device_id", [])
        if len(ids) != 1:
            raise NotYourDevice()
        return ids[0].decode("ascii", "replace")

    def _act(self, request, action):
        """A form's action: back to the page (303), or a page saying why not."""
        async def work():
            try:
                await action()
            except NotYourDevice:
                return _message_page(request, 404, "No such device", "You have no device with that name.")
            except TooManyPending as e:
                return _message_page(request, 409, "Too many devices waiting", str(e))
            return self._see_page(request)
        return self._later(request, work)

    def _see_page(self, request) -> bytes:
        request.setResponseCode(303)
        _headers(request)
        request.setHeader(b"Location", b"./")
        return b""

    def _events(self, request, user: str):
        if self.streams.get(user, 0) >= MAX_STREAMS_PER_USER:
            return _message_page(request, 429, "Too many open pages", "Close a few pages of this site.")
        if sum(self.streams.values()) >= MAX_STREAMS:
            request.setHeader(b"Retry-After", b"30")
            return _message_page(request, 503, "Busy", "Too many pages are open on this service; "
                                                       "this one will update when you reload it.")
        self.streams[user] = self.streams.get(user, 0) + 1
        _headers(request, b"text/event-stream", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")  # proxies: do not hold the stream back
        request.write(b"retry: 3000\n\n")
        heartbeat = None

        def beat():
            nonlocal heartbeat
            request.write(b": still here\n\n")
            heartbeat = self.clock.callLater(HEARTBEAT, beat)

        if self.clock is not None:
            heartbeat = self.clock.callLater(HEARTBEAT, beat)
        stop = self.desk.watch(user, lambda: request.write(b"event: devices\ndata: changed\n\n"))

        def gone(_):
            stop()
            if heartbeat is not None and heartbeat.active():
                heartbeat.cancel()
            self.streams[user] -= 1
            if not self.streams[user]:
                del self.streams[user]

        request.notifyFinish().addBoth(gone)
        return server.NOT_DONE_YET


def make_site(desk: PairingDesk, user_header: str = USER_HEADER, clock=None,
              hosts: tuple[str, ...] = ()) -> server.Site:
    site = server.Site(PairingPage(desk, user_header, clock, hosts=hosts))
    site.displayTracebacks = False
    return site
