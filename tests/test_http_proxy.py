"""HTTP proxy settings (as curl reads them) and the CONNECT tunnel, in memory."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import pytest
from twisted.internet import defer, error
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport

from linchpin_common import console, mqtt_client
from linchpin_common.gateway_client import GatewayAPI, make_http_client
from linchpin_common.http_proxy import (PASSWORD_ENV, Proxy, ProxyAuthRequired, ProxyConfig, ProxyError,
                                        ProxyRefused, ProxySettingsError, ProxyUnreachable, TunnelEndpoint)

# -- settings ---------------------------------------------------------------------


def test_environment_is_read_as_curl_reads_it():
    env = {"HTTPS_PROXY": "http://upper:3128", "https_proxy": "http://lower:3128", "HTTP_PROXY": "http://cgi:1",
           "all_proxy": "http://all:8080"}
    config = ProxyConfig.resolve(env=env)
    assert config.for_url("https://gw.example.com") == Proxy("lower", 3128)
    assert config.for_url("wss://gw.example.com/mqtt") == Proxy("lower", 3128)
    # curl ignores HTTP_PROXY (a CGI program gets it from a request header): all_proxy applies
    assert config.for_url("http://127.0.0.1:8080") == Proxy("all", 8080)
    assert ProxyConfig.resolve(env={"HTTPS_PROXY": "proxy.corp"}).for_url("https://gw") == Proxy("proxy.corp", 1080)
    assert ProxyConfig.resolve(env={"http_proxy": "http://p:3128"}).for_url("ws://gw/mqtt") == Proxy("p", 3128)
    assert not ProxyConfig.resolve(env={})
    assert ProxyConfig.resolve(env={}).for_url("https://gw") is None


def test_option_overrides_the_environment_and_empty_turns_proxies_off():
    env = {"https_proxy": "http://env:3128", "http_proxy": "http://env:3128", "no_proxy": "local.corp"}
    config = ProxyConfig.resolve("http://cli.corp:8080", env=env)
    assert config.for_url("https://gw.example.com") == Proxy("cli.corp", 8080)
    assert config.for_url("http://127.0.0.1:9000") == Proxy("cli.corp", 8080)
    assert config.for_url("https://gw.local.corp") is None  # no_proxy still applies, as with curl -x
    off = ProxyConfig.resolve("", env=env)
    assert not off and off.for_url("https://gw.example.com") is None


@pytest.mark.parametrize("no_proxy, host, bypass", [
    ("*", "gw.example.com", True),
    ("example.com", "gw.example.com", True),
    ("example.com", "example.com", True),
    (".example.com", "gw.example.com", True),
    ("example.com", "badexample.com", False),
    ("gw.example.com", "example.com", False),
    ("10.0.0.0/8, 127.0.0.1", "127.0.0.1", True),
    ("10.0.0.0/8", "10.20.30.40", True),
    ("10.0.0.0/8", "11.0.0.1", False),
    ("::1", "::1", True),
    ("localhost", "127.0.0.1", False),
    ("", "gw.example.com", False),
])
def test_no_proxy(no_proxy, host, bypass):
    config = ProxyConfig.resolve("http://proxy:3128", env={"NO_PROXY": no_proxy})
    url = f"https://[{host}]:443" if ":" in host else f"https://{host}"
    assert (config.for_url(url) is None) is bypass


def test_password_sources_and_it_is_never_shown(tmp_path):
    with_url = ProxyConfig.resolve(env={"https_proxy": "http://bob:s3cret@proxy:3128"}).https
    assert with_url.password == "s3cret" and with_url.authorization() == b"Basic Ym9iOnMzY3JldA=="
    assert "s3cret" not in repr(with_url) and "s3cret" not in str(with_url) and str(with_url) == "http://bob@proxy:3128"
    from_env = ProxyConfig.resolve("http://bob@proxy:3128", env={PASSWORD_ENV: "fromenv"}).https
    assert from_env.password == "fromenv"
    secret_file = tmp_path / "proxy-password"
    secret_file.write_text("fromfile\n")
    from_file = ProxyConfig.resolve("http://bob@proxy:3128", password_file=str(secret_file),
                                    env={PASSWORD_ENV: "fromenv"}).https
    assert from_file.password == "fromfile"
    assert ProxyConfig.resolve("http://proxy:3128", env={}).https.authorization() is None
    with pytest.raises(ProxySettingsError, match="names no user"):
        ProxyConfig.resolve("http://proxy:3128", password_file=str(secret_file), env={})
    with pytest.raises(ProxySettingsError, match="cannot read the proxy password file"):
        ProxyConfig.resolve("http://bob@proxy:3128", password_file=str(tmp_path / "missing"), env={})


def test_a_password_on_the_command_line_is_used_with_a_warning():
    """INTERFACE.md: --proxy http://[user:password@]host:port; the user is told
    the password shows in ps, and the warning does not repeat it."""
    args = SimpleNamespace(proxy="http://bob:s3cret@proxy:3128", proxy_password_file=None)
    warnings = []
    config = console.proxy_config(args, warn=warnings.append)
    assert config.https.authorization() == b"Basic " + base64.b64encode(b"bob:s3cret")
    assert len(warnings) == 1 and "visible in ps" in warnings[0] and "--proxy-password-file" in warnings[0]
    assert "s3cret" not in warnings[0]
    quiet = []
    console.proxy_config(SimpleNamespace(proxy="http://bob@proxy:3128", proxy_password_file=None), warn=quiet.append)
    assert quiet == []


@pytest.mark.parametrize("url, message", [
    ("https://proxy:3128", "only http:// proxies"),
    ("socks5://proxy:1080", "only http:// proxies"),
    ("http://proxy:notaport", "bad port"),
    ("http://proxy:3128/path", "use http://"),
])
def test_unusable_proxy_urls(url, message):
    with pytest.raises(ProxySettingsError, match=message):
        ProxyConfig.resolve(url, env={})


def test_an_unusable_url_keeps_its_password_out_of_the_error():
    with pytest.raises(ProxySettingsError) as caught:
        ProxyConfig.resolve(env={"https_proxy": "https://bob:s3cret@proxy:3128"})
    assert "s3cret" not in str(caught.value)


# -- the tunnel ---------------------------------------------------------------------


class FakeProxyEndpoint:
    """Reaches 'the proxy' as a StringTransport; or fails like a refused TCP connect."""

    def __init__(self, fail=None):
        self.fail = fail
        self.transport = StringTransport()
        self.protocol = None

    def connect(self, factory):
        if self.fail is not None:
            return defer.fail(self.fail)
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        return defer.succeed(self.protocol)


class Recorder(Protocol):
    def __init__(self):
        self.received = []
        self.lost = None

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason):
        self.lost = reason


def tunnel(proxy=Proxy("proxy.corp", 3128), fail=None, timeout=30):
    clock = MemoryReactorClock()
    proxy_endpoint = FakeProxyEndpoint(fail)
    endpoint = TunnelEndpoint(clock, proxy, "gw.example.com", 443, timeout=timeout, proxy_endpoint=proxy_endpoint)
    inner = Recorder()
    d = endpoint.connect(Factory.forProtocol(lambda: inner))
    return clock, proxy_endpoint, inner, d


def failure_of(d):
    failures = []
    d.addErrback(failures.append)
    assert failures, "the Deferred did not fail"
    return failures[0].value


def test_tunnel_sends_connect_and_hands_over_the_connection():
    clock, proxy, inner, d = tunnel(Proxy("proxy.corp", 3128, "bob", "s3cret"))
    assert proxy.transport.value() == (b"CONNECT gw.example.com:443 HTTP/1.1\r\nHost: gw.example.com:443\r\n"
                                       b"Proxy-Authorization: Basic Ym9iOnMzY3JldA==\r\n\r\n")
    proxy.transport.clear()
    proxy.protocol.dataReceived(b"HTTP/1.1 200 Connection est")
    assert not d.called
    proxy.protocol.dataReceived(b"ablished\r\nProxy-Agent: test\r\n\r\n\x16\x03\x01")
    assert d.called and d.result is inner
    assert inner.received == [b"\x16\x03\x01"]  # what followed the answer is the gateway's
    inner.transport.write(b"to the gateway")
    assert proxy.transport.value() == b"to the gateway"
    proxy.protocol.dataReceived(b"more")
    assert inner.received[-1] == b"more"
    proxy.protocol.connectionLost(error.ConnectionDone())
    assert inner.lost is not None
    assert clock.getDelayedCalls() == []


def test_407_is_one_line_saying_what_to_do():
    clock, proxy, inner, d = tunnel(Proxy("proxy.corp", 3128, "bob", "hunter2"))
    proxy.protocol.dataReceived(b"HTTP/1.0 407 Proxy Authentication Required\r\n"
                                b"Proxy-Authenticate: Basic realm=\"corp\"\r\n\r\n<html>")
    reason = failure_of(d)
    assert isinstance(reason, ProxyAuthRequired) and isinstance(reason, ConnectionError)
    assert str(reason).startswith("proxy proxy.corp:3128 requires authentication (407; wrong user name or password)")
    assert "--proxy-password-file" in str(reason) and "hunter2" not in str(reason) and "\n" not in str(reason)
    assert proxy.transport.disconnecting and inner.received == [] and clock.getDelayedCalls() == []


def test_407_without_credentials():
    _, proxy, _, d = tunnel()
    proxy.protocol.dataReceived(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
    assert "no credentials given" in str(failure_of(d))


def test_401_to_connect_is_the_proxy_refusing_credentials():
    # tinyproxy answers wrong credentials so; CONNECT never reached the target
    _, proxy, _, d = tunnel(Proxy("proxy.corp", 3128, "bob", "hunter2"))
    proxy.protocol.dataReceived(b"HTTP/1.0 401 Unauthorized\r\n\r\n")
    reason = failure_of(d)
    assert isinstance(reason, ProxyAuthRequired) and "(401; wrong user name or password)" in str(reason)
    assert "hunter2" not in str(reason)


def test_refused_connect_quotes_the_status_line():
    _, proxy, inner, d = tunnel()
    proxy.protocol.dataReceived(b"HTTP/1.1 403 Access violation\r\nServer: tinyproxy\r\n\r\n")
    reason = failure_of(d)
    assert isinstance(reason, ProxyRefused) and reason.status_line == "HTTP/1.1 403 Access violation"
    assert str(reason) == "proxy proxy.corp:3128 refused CONNECT gw.example.com:443: HTTP/1.1 403 Access violation"
    assert proxy.transport.disconnecting


def test_not_an_http_proxy():
    _, proxy, _, d = tunnel()
    proxy.protocol.dataReceived(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    assert "did not answer CONNECT like an HTTP proxy" in str(failure_of(d))


def test_an_endless_answer_is_cut():
    _, proxy, _, d = tunnel()
    proxy.protocol.dataReceived(b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * 20_000)
    assert "over-long" in str(failure_of(d)) and proxy.transport.disconnecting


def test_proxy_closing_before_answering():
    _, proxy, _, d = tunnel()
    proxy.protocol.connectionLost(error.ConnectionDone())
    assert str(failure_of(d)) == ("proxy proxy.corp:3128 closed the connection without answering "
                                  "CONNECT gw.example.com:443")


def test_proxy_unreachable():
    _, _, _, d = tunnel(fail=error.ConnectionRefusedError())
    reason = failure_of(d)
    assert isinstance(reason, ProxyUnreachable)
    assert str(reason).startswith("proxy proxy.corp:3128 unreachable: Connection was refused")


def test_silent_proxy_times_out():
    clock, proxy, _, d = tunnel(timeout=10)
    clock.advance(9)
    assert not d.called
    clock.advance(1)
    assert "did not answer CONNECT gw.example.com:443 within 10 s" in str(failure_of(d))
    assert proxy.transport.disconnecting


def test_cancelling_closes_the_proxy_connection():
    clock, proxy, _, d = tunnel()
    d.cancel()
    assert isinstance(failure_of(d), defer.CancelledError)
    assert proxy.transport.disconnecting and clock.getDelayedCalls() == []


def test_ipv6_target_is_bracketed():
    endpoint = TunnelEndpoint(MemoryReactorClock(), Proxy("proxy", 3128), "2001:db8::1", 443,
                              proxy_endpoint=FakeProxyEndpoint())
    assert endpoint.target == "[2001:db8::1]:443"
    assert str(Proxy("2001:db8::2", 3128)) == "http://[2001:db8::2]:3128"


# -- the clients use it ---------------------------------------------------------------

BOTH = Proxy("10.9.9.9", 3128)


def test_rest_client_goes_through_the_tunnel_and_no_proxy_goes_direct():
    reactor = MemoryReactorClock()
    config = ProxyConfig(BOTH, BOTH, no_proxy="direct.example")
    http = make_http_client(reactor, proxy=config, persistent=False)
    api = GatewayAPI(http, "http://gw.example:8080", "inst", "pw")
    listed = defer.ensureDeferred(api.list_devices())
    (host, port, factory, _, _), = reactor.tcpClients
    assert port == 3128  # the memory reactor resolves every name to 127.0.0.1; the port is the proxy's
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert transport.value() == b"CONNECT gw.example:8080 HTTP/1.1\r\nHost: gw.example:8080\r\n\r\n"
    transport.clear()
    protocol.dataReceived(b"HTTP/1.1 200 Connection established\r\n\r\n")
    request = transport.value()
    assert request.startswith(b"GET /api/v1/devices HTTP/1.1\r\n") and b"Authorization: Basic " in request
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n"
                          b'{"devices": []}')
    assert listed.result == []

    direct = GatewayAPI(http, "http://gw.direct.example:8080")
    defer.ensureDeferred(direct.register())
    assert reactor.tcpClients[-1][1] == 8080


def test_websocket_goes_through_the_tunnel():
    reactor = MemoryReactorClock()
    d = mqtt_client.connect(reactor, "http://gw.example:8080", "u", "p", on_message=None,
                            proxy=ProxyConfig(BOTH, BOTH))
    (_, port, factory, _, _), = reactor.tcpClients
    assert port == 3128
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert transport.value() == b"CONNECT gw.example:8080 HTTP/1.1\r\nHost: gw.example:8080\r\n\r\n"
    transport.clear()
    protocol.dataReceived(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
    assert isinstance(failure_of(d), ProxyAuthRequired)


def test_the_daemon_keeps_retrying_with_its_backoff_after_a_proxy_error():
    from twisted.internet.task import Clock

    from linchpin_common.gateway_client import GatewayLink

    clock = Clock()
    attempts = []

    def connect(reactor, url, username, password, **kw):
        attempts.append(kw["proxy"])
        return defer.fail(ProxyAuthRequired("proxy p:1 requires authentication (407; no credentials given)"))

    link = GatewayLink(clock, "https://gw", "u", "p", [], on_message=None, rng=lambda: 1.0, connect=connect,
                       proxy=ProxyConfig(BOTH, BOTH))
    link.startService()
    for delay in (1, 2, 4):
        clock.advance(delay)
    assert len(attempts) == 4 and attempts[0].https is BOTH
    link.stopService()


def test_proxy_errors_are_connection_errors():
    # Whatever treats the gateway as unreachable (exit status 3, reconnect) treats these the same.
    assert issubclass(ProxyError, ConnectionError) and issubclass(ProxyError, console.UNREACHABLE)


def test_device_library_takes_a_proxy_and_defaults_to_the_environment(tmp_path, monkeypatch):
    from linchpin_connector.device import Device, DeviceState

    state = DeviceState(path=str(tmp_path / "phone.json"), gateway_url="https://gw.example.com",
                        device_id="d" * 32, device_password="pw", connector_key="k")
    seen = []

    def connect(reactor, url, username, password, **kw):
        seen.append(kw["proxy"])
        return defer.fail(ProxyUnreachable("proxy p:1 unreachable: refused"))

    monkeypatch.setenv("https_proxy", "http://env-proxy:3128")
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    default = Device(MemoryReactorClock(), state, connect=connect)
    failure_of(default.open())
    assert seen[-1].for_url("https://gw.example.com") == Proxy("env-proxy", 3128)

    direct = Device(MemoryReactorClock(), state, connect=connect, proxy=ProxyConfig.none())
    reason = failure_of(direct.open())
    assert seen[-1].for_url("https://gw.example.com") is None
    assert str(reason) == "proxy p:1 unreachable: refused"  # the device says it as the proxy said it


class _Socket(FileDescriptor):
    """Enough of a socket transport for the HTTP client: bytes written are kept."""

    def __init__(self, reactor):
        super().__init__(reactor)
        self.connected = True
        self.written = b""
        self.no_delay = False

    def setTcpNoDelay(self, enabled):
        self.no_delay = enabled

    def writeSomeData(self, data):
        self.written += bytes(data)
        return len(data)

    def getPeer(self):
        return IPv4Address("TCP", "127.0.0.1", 8090)

    def getHost(self):
        return IPv4Address("TCP", "127.0.0.1", 50000)


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("read_size", [None, 262144])
def test_the_backend_client_reads_as_much_as_a_body_message_carries(read_size, scheme):
    """The connector reads its backend in reads as large as one body message
    (Twisted's default is 64 KiB), and its writes go out without Nagle's wait;
    for https too, where the socket lies under the TLS layer."""
    reactor = MemoryReactorClock()
    http = make_http_client(reactor, persistent=False, read_size=read_size)
    http.get(f"{scheme}://intranet.example:8090/download")
    (_, port, factory, _, _), = reactor.tcpClients
    assert port == 8090
    protocol = factory.buildProtocol(None)
    socket = _Socket(reactor)
    protocol.makeConnection(socket)
    socket.doWrite()
    if scheme == "http":
        assert socket.written.startswith(b"GET /download HTTP/1.1\r\n")
    else:
        assert socket.written[:1] == b"\x16"  # a TLS handshake record: the ClientHello
    assert socket.bufferSize == (read_size or FileDescriptor.bufferSize)
    assert socket.no_delay or not read_size
