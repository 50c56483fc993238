"""Talking to the gateway: its REST API (treq) and a session that reconnects for ever."""

from __future__ import annotations

import ipaddress
import json
import random
from urllib.parse import urlsplit

import treq
from twisted.application import service
from twisted.internet import defer
from twisted.internet.abstract import FileDescriptor
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from . import mqtt_client
from .contract import topics
from .http_proxy import ProxyConfig, gateway_endpoint
from .tls import tls_failure, trust_root



class GatewayError(Exception):
    """The gateway answered with an error (or something that is not our API)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"gateway said {status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class InsecureURL(ValueError):
    pass


def check_gateway_url(url: str, allow_insecure: bool = False) -> str:
    """Normalise a gateway URL; refuse plain http except on loopback or when asked."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InsecureURL(f"not an http(s) URL: {url!r}")
    host = parts.hostname
    if parts.scheme == "http" and not allow_insecure and not is_loopback(host):
        raise InsecureURL(f"refusing plain http to {host}; use https or pass --insecure")
    return url.rstrip("/")


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address; never a DNS name like ``127.example``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_http_client(reactor, ca_file: str | None = None, persistent: bool = True,
                     proxy: ProxyConfig | None = None, read_size: int | None = None) -> treq.client.HTTPClient:
    """A treq client verifying certificates (system roots, or a private CA PEM),
    going through an HTTP CONNECT tunnel where ``proxy`` says so (None: direct);
    ``read_size`` sets how much one read from its sockets may take (Twisted's
    default is 64 KiB)."""
    policy = BrowserLikePolicyForHTTPS(trustRoot=trust_root(ca_file))
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    if not proxy and read_size is None:
        return treq.client.HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))
    return treq.client.HTTPClient(Agent.usingEndpointFactory(reactor, _Endpoints(reactor, policy, proxy, read_size),
                                                             pool=pool))


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """Agent endpoints: a CONNECT tunnel where the proxy settings name one,
    else a direct connection; TLS to the target either way for https."""

    def __init__(self, reactor, policy, proxy: ProxyConfig | None, read_size: int | None = None,
                 timeout: float = 30):
        self.reactor, self.policy, self.proxy, self.timeout = reactor, policy, proxy, timeout
        self.read_size = read_size
        self._made: dict = {}

    def endpointForURI(self, uri):
        # Asked for every request, also when a pooled connection will serve it:
        # an endpoint is a reusable recipe, so each target's is made once.
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._made.get(key)
        if endpoint is None:
            if len(self._made) >= 64:
                self._made.clear()
            endpoint = self._made[key] = self._endpoint(uri)
        return endpoint

    def _endpoint(self, uri):
        host = uri.host.decode("ascii")
        scheme = uri.scheme.decode("ascii")
        endpoint = gateway_endpoint(self.reactor, self.proxy, f"{scheme}://{host}:{uri.port}", host, uri.port,
                                    timeout=self.timeout)
        if scheme == "https":
            endpoint = wrapClientTLS(self.policy.creatorForNetloc(uri.host, uri.port), endpoint)
        if self.read_size is not None:
            endpoint = _ReadSize(endpoint, self.read_size)
        return endpoint


@implementer(IStreamClientEndpoint)
class _ReadSize:
    """An endpoint whose connections read up to ``size`` bytes at a time and
    send small writes at once (TCP_NODELAY: a request's body written after
    its headers must not wait for the peer's delayed ACK)."""

    def __init__(self, endpoint, size: int):
        self.endpoint, self.size = endpoint, size

    def connect(self, protocol_factory):
        def connected(protocol):
            # Down through TLS (or a tunnel) to the socket's own transport.
            transport = protocol.transport
            while transport is not None and not isinstance(transport, FileDescriptor):
                transport = getattr(transport, "transport", None)
            if transport is not None:
                transport.bufferSize = self.size
                transport.setTcpNoDelay(True)
            return protocol

        return self.endpoint.connect(protocol_factory).addCallback(connected)


# Far above any answer of ours (5000 devices listed are about 400 KiB): a
# gateway that sends more is not one, and is not read into memory.
MAX_ANSWER = 16 * 1024 * 1024


class GatewayAPI:
    """PROTOCOL.md section 2, client side."""

    def __init__(self, http, gateway_url: str, instance_id: str | None = None, password: str | None = None,
                 max_answer: int = MAX_ANSWER):
        self.http = http
        self.url = gateway_url.rstrip("/")
        self.auth = (instance_id, password) if instance_id else None
        self.max_answer = max_answer

    async def _call(self, method: str, path: str, body=None, headers=None, auth=True):
        kwargs = {"headers": dict(headers or {})}
        if body is not None:
            kwargs["data"] = json.dumps(body).encode()
            kwargs["headers"]["Content-Type"] = "application/json"
        if auth and self.auth:
            kwargs["auth"] = self.auth
        try:
            response = await self.http.request(method, self.url + path, **kwargs)
        except Exception as e:
            failure = tls_failure(e, urlsplit(self.url).netloc)
            if failure is not None:
                raise failure from e
            raise
        raw = await self._read(response)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        if response.code >= 400:
            if isinstance(parsed, dict) and "error" in parsed:
                raise GatewayError(response.code, parsed["error"], parsed.get("message", ""))
            raise GatewayError(response.code, "unexpected", "the server is not a Linchpin gateway")
        return parsed

    async def _read(self, response) -> bytes:
        parts, size = [], 0

        def collect(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > self.max_answer:  # raised here, treq closes the connection
                raise GatewayError(response.code, "unexpected",
                                   f"the server's answer is over {self.max_answer} bytes; not a Linchpin gateway")
            parts.append(data)

        await treq.collect(response, collect)
        return b"".join(parts)

    async def register(self, token: str | None = None) -> dict:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return await self._call("POST", "/api/v1/instances", {}, headers=headers, auth=False)

    async def add_device(self) -> dict:
        return await self._call("POST", "/api/v1/devices", {})

    async def list_devices(self) -> list:
        return (await self._call("GET", "/api/v1/devices"))["devices"]

    async def revoke(self, device_id: str) -> None:
        await self._call("DELETE", f"/api/v1/devices/{device_id}")

    async def setup(self, setup_key: str) -> dict:
        return await self._call("POST", "/api/v1/devices/setup", {"device_setup_key": setup_key}, auth=False)


def backoff(failures: int, draw: float, first: float = 1.0, cap: float = 60.0) -> float:
    """Seconds to wait after ``failures`` failed attempts in a row: the
    window doubles from ``first`` to ``cap``, and ``draw`` (uniform in
    [0, 1)) places the wait between a tenth of the window and all of it.

    A fixed window stretched by a little jitter brings back together the
    clients that were turned away together: a node restarting with 10,000
    sessions saw them return in waves 30-40 s apart, its PBKDF2 pool idle
    in between (docs/benchmarks.md, "The storm"). Spread over the window,
    they arrive at an even rate the node can take."""
    window = min(cap, first * 2 ** min(failures, 32))
    return window * (0.1 + 0.9 * draw)


class GatewayLink(service.Service):
    """One MQTT session to the gateway, reopened for ever with backoff.

    Backoff starts at 1 s and doubles up to 60 s; each wait is drawn at
    random between a tenth of that and all of it, so that a fleet turned
    away at once (a gateway node restarting) comes back spread over the
    whole window rather than in waves (:func:`backoff`).
    ``on_connected(client)`` runs (and may return a Deferred) each time a
    session is up and subscribed.
    """

    log = Logger()
    MIN_DELAY, MAX_DELAY = 1.0, 60.0

    def __init__(self, reactor, gateway_url: str, username: str, password: str, subscriptions,
                 on_message, on_connected=None, on_disconnected=None, ca_file=None,
                 keep_alive: int = mqtt_client.DEFAULT_KEEP_ALIVE, rng=random.random, connect=mqtt_client.connect,
                 proxy: ProxyConfig | None = None, client_id: str = ""):
        """``client_id``: the MQTT client identifier, a connector's name."""
        self.reactor = reactor
        self.gateway_url = gateway_url
        self.client_id = client_id
        self.username, self.password = username, password
        self.subscriptions = list(subscriptions)
        self.on_message = on_message
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.ca_file = ca_file
        self.proxy = proxy
        self.keep_alive = keep_alive
        self.rng = rng
        self._connect = connect
        self.client: mqtt_client.MQTTClient | None = None
        self.failures = 0
        self.connects = 0
        self._retry = None
        self._attempt = None
        self._restarting = False

    def next_delay(self) -> float:
        return backoff(self.failures, self.rng(), self.MIN_DELAY, self.MAX_DELAY)

    def startService(self):
        super().startService()
        self._open()

    def stopService(self):
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._attempt is not None:
            self._attempt.cancel()
        client = self.client
        if client is not None:
            client.close()  # may end the session (and clear self.client) at once
            return client.closed

    def restart(self) -> None:
        """End the session and open a new one at once (not after a backoff)."""
        client = self.client
        if client is None:
            return
        self.failures = 0
        self._restarting = True
        client.close()

    def _open(self) -> None:
        self._retry = None
        d = self._attempt = self._connect(self.reactor, self.gateway_url, self.username, self.password,
                                          on_message=self.on_message, keep_alive=self.keep_alive,
                                          ca_file=self.ca_file, proxy=self.proxy,
                                          **({"client_id": self.client_id} if self.client_id else {}))
        d.addCallback(self._up)
        d.addErrback(self._failed)

    @defer.inlineCallbacks
    def _up(self, client):
        self._attempt = None
        self.client = client
        client.closed.addCallback(self._down)
        codes = yield client.subscribe([(topic, 0) for topic in self.subscriptions])
        if topics.SUBACK_FAILURE in codes:
            self.log.error("gateway refused a subscription: {codes}", codes=codes)
        self.failures = 0
        self.connects += 1
        self.log.info("connected to the gateway at {url}", url=self.gateway_url)
        if self.on_connected is not None:
            yield self.on_connected(client)

    def _failed(self, failure) -> None:
        self._attempt = None
        if failure.check(defer.CancelledError) or not self.running:
            return
        self.log.warn("cannot reach the gateway: {error}", error=failure.getErrorMessage())
        self._schedule()

    def _down(self, reason) -> None:
        self.client = None
        if self.on_disconnected is not None:
            self.on_disconnected()
        if self.running:
            self.log.info("gateway session ended ({reason}); reconnecting", reason=reason)
            self._schedule()

    def _schedule(self) -> None:
        if self._retry is not None and self._retry.active():
            return  # a failed subscribe also ends the session: retry once
        delay = 0 if self._restarting else self.next_delay()
        self._restarting = False
        self.failures += 1
        self._retry = self.reactor.callLater(delay, self._open)
