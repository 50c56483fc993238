"""Reaching the gateway through an HTTP proxy: the settings (as curl reads
them) and an endpoint that opens an HTTP CONNECT tunnel.

Settings: ``--proxy URL`` (``http://[user[:password]@]host[:port]``) is used
for every gateway URL; ``--proxy ''`` turns proxies off; without the option the
environment decides, as curl does: ``https_proxy``/``HTTPS_PROXY`` for https,
``http_proxy`` for http (curl ignores ``HTTP_PROXY``; so do we, see
docs/protocol-notes.md), then ``all_proxy``/``ALL_PROXY``.
``no_proxy``/``NO_PROXY`` (also with ``--proxy``) lists hosts reached
directly: ``*``, a name (and its subdomains), an IP address or a CIDR block.

The proxy password may come from the URL, but a command line is visible in
``ps``: ``--proxy-password-file FILE`` or the ``LINCHPIN_PROXY_PASSWORD``
environment variable keep it out.  It is never logged: :class:`Proxy` shows
itself as ``http://user@host:port``.

:class:`TunnelEndpoint` sends ``CONNECT host:port`` to the proxy and, once it
answers 2xx, hands the raw connection to the caller's protocol, so TLS to the
gateway (with the usual certificate checks) runs inside the tunnel.  Failures
are one-line :class:`ProxyError`\\ s: unreachable, 407, any other refusal
(with the proxy's status line), or a proxy that closed without answering.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

PASSWORD_ENV = "LINCHPIN_PROXY_PASSWORD"
MAX_RESPONSE_HEAD = 16 * 1024  # a CONNECT answer longer than this is not a proxy talking
DEFAULT_PORT = 1080  # curl's default proxy port


class ProxyError(ConnectionError):
    """The proxy did not give us a tunnel; ``str()`` is a one-line reason.

    A ``ConnectionError``, so whatever treats the gateway as unreachable
    (the daemon's reconnect loop, the CLIs' exit status 3) still does."""


class ProxyUnreachable(ProxyError):
    pass


class ProxyAuthRequired(ProxyError):
    """407 (or 401): no credentials, or wrong ones."""


class ProxyRefused(ProxyError):
    """Any other non-2xx answer to CONNECT; ``status_line`` is the proxy's."""

    def __init__(self, message: str, status_line: str):
        super().__init__(message)
        self.status_line = status_line


class ProxySettingsError(ValueError):
    """A proxy URL or password source that cannot be used; ``str()`` says why."""


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{user}{host}:{self.port}"

    @property
    def address(self) -> str:
        return str(self).split("@")[-1].removeprefix("http://")

    def authorization(self) -> bytes | None:
        """The ``Proxy-Authorization`` value (Basic), if we have a user name."""
        if self.username is None:
            return None
        raw = f"{self.username}:{self.password or ''}".encode("utf-8")
        return b"Basic " + base64.b64encode(raw)


def parse_proxy_url(url: str, password: str | None = None) -> Proxy:
    """``http://[user[:password]@]host[:port]`` (a bare ``host:port`` too, as
    curl takes it); ``password``, if given, replaces the URL's."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ProxySettingsError(f"proxy {_hide_password(url)!r}: only http:// proxies are supported "
                                 "(the tunnel to the gateway is TLS already)")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ProxySettingsError(f"proxy {_hide_password(url)!r}: bad port")
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxySettingsError(f"proxy {_hide_password(url)!r}: use http://[user@]host:port")
    username = unquote(parts.username) if parts.username is not None else None
    url_password = unquote(parts.password) if parts.password is not None else None
    if password is not None and username is None:
        raise ProxySettingsError("a proxy password was given but the proxy URL names no user: "
                                 "use http://user@host:port")
    return Proxy(parts.hostname, port, username, password if password is not None else url_password)


def _hide_password(url: str) -> str:
    scheme, sep, rest = url.rpartition("://")
    userinfo, at, hostport = rest.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{scheme}{sep}{userinfo}{at}{hostport}"


def url_has_password(url: str | None) -> bool:
    """True if a proxy URL carries a password (so a command line would show it)."""
    if not url:
        return False
    try:
        return urlsplit(url if "://" in url else "http://" + url).password is not None
    except ValueError:
        return False


def read_password_file(path: str) -> str:
    """The first line of ``path``, without its line ending."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except OSError as e:
        raise ProxySettingsError(f"cannot read the proxy password file {path}: {e.strerror or e}")


class ProxyConfig:
    """Which proxy, if any, to use for a given gateway URL."""

    def __init__(self, https: Proxy | None = None, http: Proxy | None = None, no_proxy: str = ""):
        self.https, self.http = https, http
        self.no_proxy = [entry.strip().lower() for entry in no_proxy.split(",") if entry.strip()]

    @classmethod
    def none(cls) -> ProxyConfig:
        return cls()

    @classmethod
    def resolve(cls, option: str | None = None, *, password_file: str | None = None,
                env=None) -> ProxyConfig:
        """From a ``--proxy`` value (``None``: the environment; ``''``: none) and
        an optional password file (else ``LINCHPIN_PROXY_PASSWORD``)."""
        env = os.environ if env is None else env
        password = read_password_file(password_file) if password_file else env.get(PASSWORD_ENV) or None
        no_proxy = env.get("no_proxy", env.get("NO_PROXY", ""))
        if option is not None:
            if option == "":
                return cls()
            proxy = parse_proxy_url(option, password)
            return cls(proxy, proxy, no_proxy)
        everything = env.get("all_proxy") or env.get("ALL_PROXY")
        https = env.get("https_proxy") or env.get("HTTPS_PROXY") or everything
        http = env.get("http_proxy") or everything
        return cls(parse_proxy_url(https, password) if https else None,
                   parse_proxy_url(http, password) if http else None, no_proxy)

    def for_url(self, url: str) -> Proxy | None:
        """The proxy for ``url`` (http(s) or ws(s)), or None to go direct."""
        parts = urlsplit(url)
        proxy = self.https if parts.scheme in ("https", "wss") else self.http
        if proxy is None or self.bypass(parts.hostname or ""):
            return None
        return proxy

    def bypass(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        for entry in self.no_proxy:
            if entry == "*":
                return True
            if address is not None:
                try:
                    if address in ipaddress.ip_network(entry.strip("[]"), strict=False):
                        return True
                except ValueError:
                    pass
                continue
            name = entry.lstrip(".").rstrip(".")
            if host == name or host.endswith("." + name):
                return True
        return False

    def __bool__(self) -> bool:
        return self.https is not None or self.http is not None


# -- the tunnel ------------------------------------------------------------------


class _TunnelProtocol(Protocol):
    """Speaks CONNECT, then passes every byte to the caller's protocol."""

    def __init__(self, endpoint: TunnelEndpoint, factory, ready: defer.Deferred):
        self.endpoint = endpoint
        self.factory = factory
        self.ready = ready
        self.inner: Protocol | None = None
        self._head = b""

    def connectionMade(self):
        ep = self.endpoint
        target = ep.target.encode("ascii")
        lines = [b"CONNECT " + target + b" HTTP/1.1", b"Host: " + target]
        auth = ep.proxy.authorization()
        if auth is not None:
            lines.append(b"Proxy-Authorization: " + auth)
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")

    def dataReceived(self, data: bytes):
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        if self.ready.called:
            return  # failed or cancelled; the connection is going away
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_RESPONSE_HEAD:
                self._fail(ProxyError(f"proxy {self.endpoint.proxy.address} sent an over-long answer to CONNECT"))
            return
        head, rest = self._head[:end], self._head[end + 4:]
        self._head = b""
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1").strip()
        words = status_line.split(" ", 2)
        code = int(words[1]) if len(words) >= 2 and words[0].startswith("HTTP/") and words[1].isdigit() else 0
        if 200 <= code < 300:
            self._open(rest)
        else:
            self._fail(self.endpoint.refusal(code, status_line))

    def _open(self, rest: bytes) -> None:
        inner = self.factory.buildProtocol(self.transport.getPeer())
        if inner is None:
            self._fail(error.ConnectError("the protocol factory refused the connection"))
            return
        self.inner = inner
        inner.makeConnection(self.transport)
        self.ready.callback(inner)
        if rest:
            inner.dataReceived(rest)

    def _fail(self, reason: Exception) -> None:
        if not self.ready.called:
            self.ready.errback(reason)
        self.transport.abortConnection()

    def connectionLost(self, reason):
        if self.inner is not None:
            self.inner.connectionLost(reason)
        elif not self.ready.called:
            self.ready.errback(ProxyError(f"proxy {self.endpoint.proxy.address} closed the connection "
                                          f"without answering CONNECT {self.endpoint.target}"))


class _TunnelFactory(Factory):
    def __init__(self, endpoint, factory, ready):
        self.endpoint, self.factory, self.ready = endpoint, factory, ready

    def buildProtocol(self, addr):
        return _TunnelProtocol(self.endpoint, self.factory, self.ready)


def gateway_endpoint(reactor, proxy: ProxyConfig | None, url: str, host: str, port: int, *, timeout: float = 30):
    """How to reach ``host:port`` (of ``url``): through a CONNECT tunnel where
    the proxy settings name a proxy for ``url``, else directly."""
    via = proxy.for_url(url) if proxy else None
    if via is not None:
        return TunnelEndpoint(reactor, via, host, port, timeout=timeout)
    return HostnameEndpoint(reactor, host, port, timeout=timeout)


@implementer(IStreamClientEndpoint)
class TunnelEndpoint:
    """``host:port`` through an HTTP CONNECT tunnel of ``proxy``.

    ``proxy_endpoint`` reaches the proxy itself (a :class:`HostnameEndpoint`
    by default; tests pass their own).  ``connect`` fires with the caller's
    protocol once the tunnel is open; wrap this endpoint with
    ``wrapClientTLS`` for TLS to the target.
    """

    def __init__(self, reactor, proxy: Proxy, host: str, port: int, *, timeout: float = 30,
                 proxy_endpoint=None):
        self.reactor = reactor
        self.proxy = proxy
        self.target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.timeout = timeout
        self.proxy_endpoint = proxy_endpoint or HostnameEndpoint(reactor, proxy.host, proxy.port, timeout=timeout)

    def refusal(self, code: int, status_line: str) -> ProxyError:
        where = f"proxy {self.proxy.address}"
        if code in (401, 407):
            # 407 is the standard answer; some proxies (tinyproxy) answer wrong
            # credentials with 401. A CONNECT never reached the target, so either is the proxy's.
            told = "wrong user name or password" if self.proxy.username else "no credentials given"
            return ProxyAuthRequired(f"{where} requires authentication ({code}; {told}): give "
                                     "http://user@host:port and the password with --proxy-password-file "
                                     f"or {PASSWORD_ENV}")
        if not code:
            return ProxyRefused(f"{where} did not answer CONNECT like an HTTP proxy ({status_line[:80]!r})",
                                status_line)
        return ProxyRefused(f"{where} refused CONNECT {self.target}: {status_line[:200]}", status_line)

    def connect(self, factory) -> defer.Deferred:
        timer = None
        connecting = None

        def cancel(d):
            if connecting is not None and not connecting.called:
                connecting.cancel()
            elif tunnel is not None and tunnel.transport is not None:
                tunnel.transport.abortConnection()

        ready = defer.Deferred(cancel)
        tunnel = None

        def connected(protocol):
            nonlocal tunnel
            tunnel = protocol  # the tunnel's outcome arrives on ``ready``

        def unreachable(failure: Failure):
            if failure.check(defer.CancelledError):
                return failure
            reason = failure.getErrorMessage() or failure.type.__name__
            return Failure(ProxyUnreachable(f"proxy {self.proxy.address} unreachable: {reason}"))

        def timed_out():
            if not ready.called:
                ready.errback(ProxyError(f"proxy {self.proxy.address} did not answer CONNECT {self.target} "
                                         f"within {self.timeout:g} s"))
                if tunnel is not None and tunnel.transport is not None:
                    tunnel.transport.abortConnection()

        def done(result):
            if timer is not None and timer.active():
                timer.cancel()
            return result

        connecting = self.proxy_endpoint.connect(_TunnelFactory(self, factory, ready))
        connecting.addCallbacks(connected, unreachable)
        connecting.addErrback(lambda f: ready.called or ready.errback(f))
        timer = self.reactor.callLater(self.timeout, timed_out)
        ready.addBoth(done)
        return ready
