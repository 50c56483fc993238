"""A small MQTT 3.1.1 client over WebSocket, for the connector and the device.

:class:`MQTTClient` is transport-agnostic (bytes in, bytes out through
callables) and owns CONNECT, packet ids, PUBACK/SUBACK matching and
keep-alive.  :class:`MQTTClientProtocol` is the thin Autobahn adapter, and
:func:`connect` opens one session: ``ws://`` or ``wss://`` (certificates are
verified, with an optional private CA).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.xormasker import create_xor_masker
from twisted.internet import defer
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger

from . import rawws
from .contract import wire
from .wsframes import LeanReceive
from .http_proxy import ProxyConfig, gateway_endpoint
from .tls import CAFileError, TLSFailure, tls_failure, tls_options  # noqa: F401 (re-exported)

DEFAULT_KEEP_ALIVE = 30
CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "gateway unavailable (overloaded)",
    4: "bad credentials (unknown, pending or revoked)",
    5: "not authorized (too many failed logins)",
}


class ConnectionRefused(Exception):
    """CONNACK with a non-zero return code."""

    def __init__(self, code: int):
        super().__init__(f"gateway refused the session: {CONNACK_REASONS.get(code, code)}")
        self.code = code


class ConnectionClosed(Exception):
    """The session ended before the operation completed."""


class MQTTClient:
    """One MQTT session as a client: feeds packets to ``on_message``."""

    log = Logger()

    def __init__(self, clock, send, disconnect, username: str, password: str, *,
                 keep_alive: int = DEFAULT_KEEP_ALIVE, on_message=None,
                 max_packet: int = wire.DEFAULT_MAX_REMAINING_LENGTH, client_id: str = ""):
        """``send(*parts)`` sends one packet, the concatenation of ``parts``
        (a PUBLISH comes as its head and its payload, not copied together).
        ``client_id``: a connector's name (a device's is empty)."""
        self.clock = clock
        self._send = send
        self._disconnect = disconnect
        self.username = username
        self.password = password
        self.client_id = client_id
        self.keep_alive = keep_alive
        self.on_message = on_message or (lambda topic, payload: None)
        self.parser = wire.Parser(max_packet)
        self.connected: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()
        self._waiting: dict[int, defer.Deferred] = {}  # packet id -> SUBACK/PUBACK/UNSUBACK waiter
        self._next_id = 0
        self._is_open = False
        self._ended = False
        self._last_sent = self._last_received = clock.seconds()
        self._timer = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self._write(wire.Connect(client_id=self.client_id, username=self.username, password=self.password.encode("utf-8"),
                                 keep_alive=self.keep_alive, clean_session=True))
        self._schedule()

    def connection_lost(self, reason: str = "connection lost") -> None:
        if self._ended:
            return
        self._ended = True
        self._is_open = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            d.errback(ConnectionClosed(reason))
        if not self.connected.called:
            self.connected.errback(ConnectionClosed(reason))
        self.closed.callback(reason)

    def close(self) -> None:
        if not self._ended:
            if self._is_open:
                self._write(wire.Disconnect())
            self._disconnect()

    # -- operations --------------------------------------------------------------

    def subscribe(self, topics) -> defer.Deferred:
        """Deferred[list of SUBACK codes] for ``[(filter, qos), ...]``."""
        packet_id = self._new_id()
        d = self._waiting[packet_id] = defer.Deferred()
        self._write(wire.Subscribe(packet_id, tuple(topics)))
        return d

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> defer.Deferred:
        if not self._is_open:
            return defer.fail(ConnectionClosed("not connected"))
        if qos == 0:
            self._send(wire.encode_publish_head(topic.encode("utf-8"), len(payload)), payload)
            self._last_sent = self.clock.seconds()
            return defer.succeed(None)
        packet_id = self._new_id()
        d = self._waiting[packet_id] = defer.Deferred()
        self._send(wire.encode_publish_head(topic.encode("utf-8"), len(payload), 1, packet_id), payload)
        self._last_sent = self.clock.seconds()
        return d

    @property
    def is_open(self) -> bool:
        return self._is_open

    # -- input -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._ended:
            return
        packets, error = self.parser.feed_to_error(data)
        if packets:
            self._last_received = self.clock.seconds()
        for packet in packets:
            if self._ended:
                return
            self._handle(packet)
        if error is not None:
            self.log.warn("malformed MQTT from the gateway: {reason}", reason=str(error))
            self._disconnect()

    def _handle(self, packet) -> None:
        kind = type(packet)
        if kind is wire.Publish:
            if packet.qos == 1:
                self._write(wire.Puback(packet.packet_id))
            self.on_message(packet.topic, packet.payload)
        elif kind is wire.Connack:
            if packet.return_code == 0:
                self._is_open = True
                self.connected.callback(self)
            else:
                self.connected.errback(ConnectionRefused(packet.return_code))
                self._disconnect()
        elif kind in (wire.Suback, wire.Puback, wire.Unsuback):
            d = self._waiting.pop(packet.packet_id, None)
            if d is not None:
                d.callback(list(packet.return_codes) if kind is wire.Suback else None)
        elif kind is wire.Pingresp:
            pass
        else:
            self.log.warn("unexpected {kind} from the gateway", kind=kind.__name__)
            self._disconnect()

    # -- keep-alive --------------------------------------------------------------

    def _schedule(self) -> None:
        self._timer = self.clock.callLater(self.keep_alive / 2, self._tick)

    def _tick(self) -> None:
        now = self.clock.seconds()
        if now - self._last_received >= self.keep_alive * 1.5:
            # The gateway answers every PINGREQ; silence this long means it is gone.
            self.log.info("gateway silent for {s:.0f} s; dropping the connection", s=now - self._last_received)
            self._disconnect()
            return
        if self._is_open and now - self._last_sent >= self.keep_alive / 2:
            self._write(wire.Pingreq())
        self._schedule()

    # -- output ------------------------------------------------------------------

    def _new_id(self) -> int:
        while True:
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._waiting:
                return self._next_id

    def _write(self, packet) -> None:
        if not self._ended:
            self._send(wire.encode(packet))
            self._last_sent = self.clock.seconds()


class MQTTClientProtocol(LeanReceive, WebSocketClientProtocol):
    """Autobahn adapter: WebSocket binary messages <-> :class:`MQTTClient`.

    Autobahn does the opening handshake and the closing; once open, the
    gateway's frames are read by :class:`~linchpin_common.wsframes.LeanReceive`
    and this protocol frames what it sends itself."""

    mqtt: MQTTClient | None = None
    _lost_reason = None  # why the connection ended, as Twisted said (Autobahn only passes a string on)

    def connectionLost(self, reason=connectionDone):
        self._lost_reason = reason
        super().connectionLost(reason)

    def onOpen(self):
        f = self.factory
        self.mqtt = MQTTClient(f.reactor, self._send_binary, self._drop, f.username, f.password,
                               keep_alive=f.keep_alive, on_message=f.on_message, max_packet=f.max_packet,
                               client_id=f.client_id)
        self.mqtt.connected.chainDeferred(f.session_ready)
        self.start_lean_receive()
        self.mqtt.start()

    def _send_binary(self, *parts) -> None:
        """One MQTT packet as one masked binary frame, its parts masked one
        after the other and written as they are: Autobahn's sendMessage
        would copy a large payload twice more (behind the packet's head,
        then behind the frame's)."""
        if self.state != self.STATE_OPEN:
            return  # closing: nothing more goes out (Autobahn would raise)
        if self.send_queue:  # frames of its own queued: keep the order
            self.sendMessage(b"".join(parts), isBinary=True)
            return
        n = sum(len(part) for part in parts)
        key = rawws.new_key()
        if n <= 1024:  # one integer XOR: cheaper than a masker object
            self.transport.write(rawws.masked_header(n) + key + rawws.mask(b"".join(parts), key))
            return
        masker = create_xor_masker(key, n)  # incremental: each part goes on where the last ended
        self.transport.writeSequence([rawws.masked_header(n) + key, *(masker.process(part) for part in parts)])

    def _drop(self) -> None:
        self.sendClose(code=1000)

    def onMessage(self, payload, isBinary):
        if self.mqtt is not None and isBinary:
            self.mqtt.data_received(payload)

    def onClose(self, wasClean, code, reason):
        if self.mqtt is not None:
            self.mqtt.connection_lost(reason or "connection closed")
        elif not self.factory.session_ready.called:
            lost = self._lost_reason
            tls = tls_failure(lost, self.factory.gateway_address) if lost is not None else None
            self.factory.session_ready.errback(tls or ConnectionClosed(reason or "WebSocket handshake failed"))


def websocket_url(gateway_url: str) -> str:
    """``http(s)://host[:port][/base]`` -> ``ws(s)://host[:port][/base]/mqtt``."""
    parts = urlsplit(gateway_url)
    scheme = {"http": "ws", "https": "wss"}[parts.scheme]
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/mqtt"


def client_factory(reactor, url: str, username: str, password: str, *, on_message,
                   keep_alive: int = DEFAULT_KEEP_ALIVE, timeout: float = 30,
                   max_packet: int = wire.DEFAULT_MAX_REMAINING_LENGTH, client_id: str = "") -> WebSocketClientFactory:
    """The Autobahn factory of one session to ``url`` (``ws(s)://.../mqtt``);
    its ``session_ready`` fires with the :class:`MQTTClient` on CONNACK 0.

    The WebSocket frame and message limits are the gateway's (a malicious
    gateway cannot make the client buffer more than one packet's worth).
    """
    factory = WebSocketClientFactory(url, protocols=["mqtt"], reactor=reactor)
    factory.protocol = MQTTClientProtocol
    limit = wire.websocket_limit(max_packet)
    factory.setProtocolOptions(autoFragmentSize=0, utf8validateIncoming=False, tcpNoDelay=True,
                               openHandshakeTimeout=timeout, closeHandshakeTimeout=5, autoPingInterval=0,
                               maxFramePayloadSize=limit, maxMessagePayloadSize=limit)
    factory.username, factory.password, factory.keep_alive = username, password, keep_alive
    factory.max_packet = max_packet
    factory.client_id = client_id
    factory.on_message = on_message
    factory.session_ready = defer.Deferred()
    factory.gateway_address = urlsplit(url).netloc
    return factory


def connect(reactor, gateway_url: str, username: str, password: str, *, on_message,
            keep_alive: int = DEFAULT_KEEP_ALIVE, ca_file: str | None = None,
            timeout: float = 30, proxy: ProxyConfig | None = None, client_id: str = "") -> defer.Deferred:
    """Deferred[MQTTClient] once CONNACK 0 arrived (``client_id``: a
    connector's name, PROTOCOL.md section 4); errbacks with
    :class:`ConnectionRefused`, :class:`ConnectionClosed` or a connection error
    (a :class:`~linchpin_common.http_proxy.ProxyError` when ``proxy`` names
    an HTTP proxy for this gateway and it gives no tunnel)."""
    url = websocket_url(gateway_url)
    parts = urlsplit(url)
    factory = client_factory(reactor, url, username, password, on_message=on_message, keep_alive=keep_alive,
                             timeout=timeout, client_id=client_id)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    endpoint = gateway_endpoint(reactor, proxy, url, parts.hostname, port, timeout=timeout)
    if parts.scheme == "wss":
        try:
            endpoint = wrapClientTLS(tls_options(parts.hostname, ca_file), endpoint)
        except CAFileError:
            return defer.fail()  # a reconnecting caller logs it and retries like any failure

    def connected(protocol):
        handle = getattr(protocol.transport, "getHandle", lambda: protocol.transport)()
        if hasattr(handle, "setTcpKeepAlive"):
            handle.setTcpKeepAlive(True)
        return factory.session_ready

    d = endpoint.connect(factory)
    d.addCallback(connected)
    return d
