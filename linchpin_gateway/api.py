"""The REST API of PROTOCOL.md section 2, and the Site that serves it.

Handlers are coroutines that return ``(status, body)`` or raise
:class:`ApiError`; the edge turns both into JSON responses.  Every write a
handler does is committed by the store before the handler returns.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from datetime import datetime, timezone

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.util import peer2str
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.resource import Resource

from .accounts import Accounts, InvalidSetupKey, LimitReached, Unauthorized, UnknownDevice
from .auth import LoginRefused
from .hashing import Overloaded
from .ratelimit import address_key
from .router import CONNECTOR
from .store import StoreUnavailable

MAX_BODY = 64 * 1024
REALM = 'realm="lmgateway"'
# The setup call is made from the phone's own page (a web app served by the
# company's connector, any origin), with no credentials: it alone answers
# CORS (PROTOCOL.md section 2).
SETUP_CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "POST",
              "Access-Control-Allow-Headers": "Content-Type"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def _unauthorized(scheme: str = "Basic") -> ApiError:
    return ApiError(401, "unauthorized", "missing or wrong credentials",
                    {"WWW-Authenticate": f"{scheme} {REALM}"})


NOT_FOUND = ("not_found", "no such resource")


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(int(seconds), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the HTTP edge -------------------------------------------------------------


class BoundedRequest(server.Request):
    """A request that keeps at most MAX_BODY bytes of body in memory.

    Anything longer is counted and discarded; the API then answers 413.
    """

    body_too_large = False

    def gotLength(self, length):
        self.content = io.BytesIO()
        self._body_seen = 0
        if length is not None and length > MAX_BODY:
            self.body_too_large = True

    def handleContentChunk(self, data):
        self._body_seen += len(data)
        if self._body_seen > MAX_BODY:
            self.body_too_large = True
        if not self.body_too_large:
            self.content.write(data)


class KeepAliveChannel(http.HTTPChannel):
    """Turns TCP keep-alive on for every accepted socket (plain or TLS)."""

    def connectionMade(self):
        super().connectionMade()
        transport = self.transport
        handle = getattr(transport, "getHandle", None)
        sock_transport = handle() if handle is not None and not hasattr(transport, "setTcpKeepAlive") else transport
        setter = getattr(sock_transport, "setTcpKeepAlive", None)
        if setter is not None:
            setter(True)


class GatewaySite(server.Site):
    requestFactory = BoundedRequest
    protocol = KeepAliveChannel
    noisy = False

    def log(self, request):
        """The access log, but for a request whose refusal is counted
        elsewhere (``request.summarised``): a restarted node turns away
        WebSocket upgrades by the ten thousand, and ``factory.full`` logs
        them once per interval with a count."""
        if not getattr(request, "summarised", False):
            super().log(request)


def _json_response(request, status: int, body, headers: dict | None = None) -> None:
    request.setResponseCode(status)
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    if body is None:
        request.finish()
        return
    data = json.dumps(body).encode("utf-8")
    request.setHeader("Content-Type", "application/json")
    request.setHeader("Cache-Control", "no-store")
    request.setHeader("Content-Length", str(len(data)))
    request.write(data)
    request.finish()


def _error_response(request, error: ApiError) -> None:
    _json_response(request, error.status, {"error": error.code, "message": error.message}, error.headers)


class _AsyncResource(Resource):
    """Runs ``self.handle(request)`` (a coroutine) and writes its outcome."""

    isLeaf = True
    log = Logger()

    def render(self, request):
        finished = []
        request.notifyFinish().addBoth(finished.append)
        d = defer.ensureDeferred(self.handle(request))

        def ok(result):
            if not finished:
                status, body = result
                _json_response(request, status, body)

        def failed(failure):
            if finished:
                return
            if failure.check(ApiError):
                _error_response(request, failure.value)
            elif failure.check(Overloaded):
                _error_response(request, ApiError(503, "unavailable", "server busy, try again",
                                                  {"Retry-After": "1"}))
            elif failure.check(StoreUnavailable):
                self.log.warn("store unavailable for {path}", path=request.path)
                _error_response(request, ApiError(503, "unavailable", "store unavailable, try again",
                                                  {"Retry-After": "5"}))
            else:
                self.log.failure("API handler failed for {path}", failure, path=request.path)
                _error_response(request, ApiError(500, "internal_error", "internal error"))

        d.addCallbacks(ok, failed)
        return server.NOT_DONE_YET


class NotFound(_AsyncResource):
    async def handle(self, request):
        raise ApiError(404, *NOT_FOUND)


class Health(_AsyncResource):
    """``/healthz`` (liveness) or ``/readyz`` (readiness): 200 once every probe
    answers, else 503 naming the first that did not.  A probe is a
    ``(name, callable returning a Deferred)``."""

    def __init__(self, probes, status: str):
        super().__init__()
        self.probes = probes
        self.status = status

    async def handle(self, request):
        if request.postpath:
            raise ApiError(404, *NOT_FOUND)
        if request.method not in (b"GET", b"HEAD"):
            raise ApiError(405, "method_not_allowed", "only GET is allowed here", {"Allow": "GET, HEAD"})
        for name, probe in self.probes:
            try:
                await probe()
            except Exception:
                raise ApiError(503, "unavailable", f"{name} unreachable", {"Retry-After": "5"})
        return 200, {"status": self.status}


class MQTTResource(WebSocketResource):
    """``/mqtt``: WebSocket upgrades only; anything else gets the API's JSON errors.

    The HTTP channel's idle timeout must not outlive the upgrade.
    """

    def render(self, request):
        if request.postpath and request.postpath != [b""]:
            _error_response(request, ApiError(404, *NOT_FOUND))
            return server.NOT_DONE_YET
        if (request.getHeader("upgrade") or "").lower() != "websocket":
            _error_response(request, ApiError(400, "bad_request",
                                              "this is the MQTT-over-WebSocket endpoint: upgrade required"))
            return server.NOT_DONE_YET
        full = self._factory.full(peer2str(request.transport))  # named as the WebSocket protocol names it
        if full:  # refused here, before the WebSocket machinery: a storm brings thousands
            request.summarised = True  # full() logged it, or counted it for its next line
            _error_response(request, ApiError(503, "unavailable", full))
            return server.NOT_DONE_YET
        request.channel.setTimeout(None)
        # The socket keeps its accept time and its per-address connection
        # slot when it becomes a WebSocket.
        self._factory._handover = request.channel
        try:
            return super().render(request)
        finally:
            self._factory._handover = None


class Root(Resource):
    """``/api/v1/...``, ``/healthz``, ``/readyz`` and ``/mqtt`` on one Site; JSON 404 elsewhere."""

    def __init__(self, api, ws_factory, live, ready):
        super().__init__()
        self._api = api
        self._not_found = NotFound()
        self.putChild(b"healthz", Health(live, "ok"))
        self.putChild(b"readyz", Health(ready, "ready"))
        self.putChild(b"mqtt", MQTTResource(ws_factory))

    def getChild(self, path, request):
        if path == b"api":
            return self._api
        return self._not_found

    def render(self, request):
        return self._not_found.render(request)


# -- the API proper -------------------------------------------------------------


class ApiV1(_AsyncResource):
    """Routes ``/api/v1/<...>``; unknown paths are 404 before any method check."""

    log = Logger(namespace="lmgateway")

    def __init__(self, accounts: Accounts, logins, *, rest_limiter, stats, public_url: str | None = None,
                 instance_limiter=None, shared_budget=None):
        """``instance_limiter`` counts every authenticated call per instance,
        so one tenant cannot keep the store busy for the others;
        ``shared_budget(key)``: Deferred[bool], the unauthenticated budget
        of ``key`` that several nodes share (None: this node alone)."""
        super().__init__()
        self.shared_budget = shared_budget
        self.accounts = accounts
        self.logins = logins
        self.rest_limiter = rest_limiter
        self.instance_limiter = instance_limiter
        self.stats = stats
        self.public_url = public_url

    def _route(self, parts):
        """(allowed methods, handler taking (request, *args), args) or None."""
        match parts:
            case ["v1", "instances"]:
                return {"POST": self.register}, ()
            case ["v1", "instance"]:
                return {"DELETE": self.delete_instance}, ()
            case ["v1", "instance", "password"]:
                return {"POST": self.rotate_password}, ()
            case ["v1", "devices"]:
                return {"POST": self.add_device, "GET": self.list_devices}, ()
            case ["v1", "devices", "setup"]:
                return {"POST": self.setup_device, "OPTIONS": self.setup_preflight}, ()
            case ["v1", "devices", device_id] if device_id:
                return {"DELETE": self.revoke_device}, (device_id,)
        return None

    # Calls that need no credentials spend the unauthenticated-call limit;
    # every other call is limited only by failed logins (the same limit as
    # failed MQTT logins), so right credentials never pay for other calls.
    OPEN = ("register", "setup_device", "setup_preflight")

    async def handle(self, request):
        host = _peer(request)
        try:
            parts = [p.decode("utf-8") for p in request.postpath]
        except UnicodeDecodeError:
            parts = None
        route = self._route(parts) if parts is not None else None
        if route is None:
            await self._charge(host)
            raise ApiError(404, *NOT_FOUND)
        methods, args = route
        if self.setup_device in methods.values():  # every answer of it, errors included
            for name, value in SETUP_CORS.items():
                request.setHeader(name, value)
        method = request.method.decode("ascii", "replace")
        handler = methods.get(method)
        if handler is None:
            await self._charge(host)
            raise ApiError(405, "method_not_allowed", f"{method} is not allowed here",
                           {"Allow": ", ".join(sorted(methods))})
        if handler.__name__ in self.OPEN:
            await self._charge(host)
        body = _body(request)
        if getattr(request, "body_too_large", False) or len(body) > MAX_BODY:
            raise ApiError(413, "payload_too_large", f"request body over {MAX_BODY} bytes")
        if body:
            ctype = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
            if ctype != "application/json":
                raise ApiError(415, "unsupported_media_type", "request body must be application/json")
        return await handler(request, *args)

    # -- helpers ------------------------------------------------------------

    async def _charge(self, host: str) -> None:
        """An unauthenticated call costs a token of its address, before it is
        answered: this node's bucket first, then (with several nodes) the
        bucket the nodes share, so a burst spread over nodes gets no more."""
        key = address_key(host)
        if not self.rest_limiter.charge(key):
            self._limited(self.rest_limiter.retry_after(key))
        if self.shared_budget is not None and not await self.shared_budget(key):
            self._limited(self.rest_limiter.retry_after(key) or 1)

    def _limited(self, retry: int):
        self.stats.rate_limited += 1
        raise ApiError(429, "rate_limited", f"too many requests; retry in {retry} s", {"Retry-After": str(retry)})

    @staticmethod
    def _json_body(request) -> dict:
        raw = _body(request)
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            # RecursionError: nesting deeper than the parser's stack (a few
            # thousand "[" fit in the 64 KiB body limit) is malformed too.
            raise ApiError(400, "bad_request", "body is not valid JSON")
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "body must be a JSON object")
        return body

    async def _instance(self, request) -> str:
        """The instance_id of valid Basic credentials, else 401."""
        header = request.getHeader("authorization") or ""
        scheme, _, value = header.partition(" ")
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            decoded = ""
        instance_id, sep, password = decoded.partition(":")
        host = _peer(request)
        if scheme.lower() != "basic" or not sep:
            instance_id, password = "", ""  # a failed login like any other
        try:
            principal = await self.logins.login(host, instance_id, password)
        except LoginRefused as refused:
            self._limited(refused.retry_after)
        if principal is None or principal.role != CONNECTOR:
            self.stats.auth_failures += 1
            self.log.debug("REST auth failure from {peer}", peer=host)
            raise _unauthorized()
        limiter = self.instance_limiter
        if limiter is not None and not limiter.charge(instance_id):
            self._limited(limiter.retry_after(instance_id))
        return instance_id

    def _gateway_url(self, request) -> str:
        if self.public_url:
            return self.public_url
        scheme = "https" if request.isSecure() else "http"
        host = request.getHeader("host")
        if not host:
            addr = request.getHost()
            host = f"{addr.host}:{addr.port}"
        return f"{scheme}://{host}"

    # -- handlers: HTTP in, domain call, HTTP out ---------------------------

    async def register(self, request):
        scheme, _, value = (request.getHeader("authorization") or "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else None
        try:
            self.accounts.authorize_registration(token)
        except Unauthorized:
            self.log.debug("registration refused from {peer}: bad token", peer=_peer(request))
            raise _unauthorized("Bearer")
        self._json_body(request)
        created = await self.accounts.register(token, host=_peer(request))
        return 201, {
            "instance_id": created.instance_id,
            "instance_password": created.instance_password,
            "gateway_url": self._gateway_url(request),
        }

    async def rotate_password(self, request):
        instance_id = await self._instance(request)
        self._json_body(request)
        try:
            password = await self.accounts.rotate_password(instance_id)
        except Unauthorized:
            raise _unauthorized()  # deleted meanwhile
        return 200, {"instance_password": password}

    async def delete_instance(self, request):
        instance_id = await self._instance(request)
        try:
            await self.accounts.delete_instance(instance_id)
        except Unauthorized:
            raise _unauthorized()
        return 204, None

    async def add_device(self, request):
        instance_id = await self._instance(request)
        self._json_body(request)
        try:
            device = await self.accounts.add_device(instance_id)
        except LimitReached as e:
            raise ApiError(403, "limit_reached", str(e))
        return 201, {
            "device_id": device.device_id,
            "device_setup_key": device.device_setup_key,
            "expires_at": rfc3339(device.expires_at),
            "gateway_url": self._gateway_url(request),
        }

    async def list_devices(self, request):
        instance_id = await self._instance(request)
        rows = await self.accounts.list_devices(instance_id)
        return 200, {"devices": [{"device_id": r.device_id, "state": r.state, "connected": r.connected}
                                 for r in rows]}

    async def revoke_device(self, request, device_id):
        instance_id = await self._instance(request)
        try:
            await self.accounts.revoke_device(instance_id, device_id)
        except UnknownDevice:
            raise ApiError(404, *NOT_FOUND)
        return 204, None

    async def setup_preflight(self, request):
        """The browser's CORS preflight of the setup call: its headers are set
        by :meth:`handle`; no body."""
        return 204, None

    async def setup_device(self, request):
        body = self._json_body(request)
        setup_key = body.get("device_setup_key")
        if not isinstance(setup_key, str):
            raise ApiError(400, "bad_request", "device_setup_key (string) is required")
        try:
            device_id, password = await self.accounts.pair_device(setup_key, host=_peer(request))
        except InvalidSetupKey:
            self.log.debug("invalid setup key from {peer}", peer=_peer(request))
            raise ApiError(404, "invalid_setup_key", "unknown, used or expired setup key")
        return 200, {"device_id": device_id, "device_password": password}


def _body(request) -> bytes:
    """The request body, read no further than one byte past the limit."""
    request.content.seek(0)
    return request.content.read(MAX_BODY + 1)


def _peer(request) -> str:
    addr = request.getClientAddress()
    return getattr(addr, "host", str(addr))
