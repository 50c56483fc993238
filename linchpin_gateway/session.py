"""One client's MQTT 3.1.1 session, and the thin Autobahn adapter that feeds it.

:class:`MQTTSession` is transport-agnostic: it takes bytes, writes bytes
through a ``send`` callable and ends the connection through ``disconnect``.
It owns the CONNECT handshake, keep-alive and packet ids, and hands routing
to the :class:`~linchpin_gateway.router.Router`.  :class:`MQTTServerProtocol`
only moves WebSocket messages in and out of it.
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.logger import Logger

from . import wire
from .hashing import Overloaded

AWAIT_CONNECT, AUTHENTICATING, CONNECTED, CLOSED = range(4)

CONNECT_TIMEOUT = 10.0  # seconds from WebSocket open to CONNECT
DEAD_AFTER = 450.0  # silence allowed for keep-alive 0 or > 300
MAX_KEEP_ALIVE = 300
MAX_QUEUED = 64  # packets pipelined behind a CONNECT that is being checked


class MQTTSession:
    log = Logger()

    def __init__(self, router, authenticator, clock, send, disconnect, peer: str = "?",
                 max_packet: int = 1048576, connect_timeout: float = CONNECT_TIMEOUT):
        self.router = router
        self.authenticator = authenticator
        self.clock = clock
        self._send = send
        self._disconnect = disconnect
        self.peer = peer
        self.parser = wire.Parser(max_packet)
        self.state = AWAIT_CONNECT
        self.client = None  # router.Client once accepted
        self._queued: list = []
        self._next_id = 0
        self._last_seen = clock.seconds()
        self._dead_after = connect_timeout
        self._timer = clock.callLater(connect_timeout, self._check_alive)

    # -- input ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        try:
            packets = self.parser.feed(data)
            error = None
        except wire.ProtocolError as e:
            # Packets complete before the bad bytes are handled first, so the
            # outcome does not depend on how the stream was split.
            packets, error = e.packets, e
        if packets:
            self._last_seen = self.clock.seconds()
        self._handle_all(packets)
        if error is not None and self.state != CLOSED:
            self.log.info("closing {peer}: malformed MQTT: {reason}", peer=self.peer, reason=str(error))
            self.close("malformed packet")

    def _handle_all(self, packets) -> None:
        for packet in packets:
            if self.state == CLOSED:
                return
            if self.state == AUTHENTICATING:
                if len(self._queued) >= MAX_QUEUED:
                    self.close("too many packets before CONNACK")
                    return
                self._queued.append(packet)
            else:
                self._handle(packet)

    def _handle(self, packet) -> None:
        if self.state == AWAIT_CONNECT:
            if isinstance(packet, wire.Connect):
                self._on_connect(packet)
            else:
                self.close("packet before CONNECT")
            return
        kind = type(packet)
        if kind is wire.Publish:
            self._on_publish(packet)
        elif kind is wire.Puback:
            pass  # deliveries are never resent, so acks need no bookkeeping
        elif kind is wire.Pingreq:
            self._write(wire.encode(wire.Pingresp()))
        elif kind is wire.Subscribe:
            self._on_subscribe(packet)
        elif kind is wire.Unsubscribe:
            self.router.unsubscribe(self.client, packet.topics)
            self._write(wire.encode(wire.Unsuback(packet.packet_id)))
        elif kind is wire.Disconnect:
            self.close("client disconnected")
        elif kind is wire.Connect:
            self.close("second CONNECT")
        else:
            self.close(f"unexpected {kind.__name__} from client")

    def _on_connect(self, packet: wire.Connect) -> None:
        if packet.protocol_level != 4:
            self._refuse(wire.CONNACK_BAD_PROTOCOL, "unsupported protocol level")
            return
        if not packet.client_id and not packet.clean_session:
            self._refuse(wire.CONNACK_IDENTIFIER_REJECTED, "empty client id without clean session")
            return
        keep_alive = packet.keep_alive
        self._keep_alive = 1.5 * keep_alive if 0 < keep_alive <= MAX_KEEP_ALIVE else DEAD_AFTER
        username = packet.username or ""
        try:
            password = (packet.password or b"").decode("utf-8")
        except UnicodeDecodeError:
            password = ""
        self.state = AUTHENTICATING
        d = defer.maybeDeferred(self.authenticator.authenticate, username, password)
        d.addCallbacks(self._authenticated, self._auth_error)
        d.addErrback(self._crashed)

    def _auth_error(self, failure) -> None:
        if self.state == CLOSED:
            return
        if failure.check(Overloaded):
            self.log.warn("password checking overloaded; refusing {peer}", peer=self.peer)
            self._refuse(wire.CONNACK_SERVER_UNAVAILABLE, "overloaded")
        else:
            self.log.failure("credential check failed for {peer}", failure, peer=self.peer)
            self._refuse(wire.CONNACK_SERVER_UNAVAILABLE, "store error")

    def _crashed(self, failure) -> None:
        self.log.failure("session error for {peer}", failure, peer=self.peer)
        self.close("internal error")

    def _authenticated(self, principal) -> None:
        if self.state == CLOSED:
            return
        if principal is None:
            self.log.info("auth failure from {peer}", peer=self.peer)
            self._refuse(wire.CONNACK_BAD_CREDENTIALS, "bad credentials")
            return
        self.state = CONNECTED
        self.client = self.router.attach(principal, self)
        self.log.info(
            "{role} {id} connected from {peer}", role=principal.role, id=principal.id, peer=self.peer
        )
        self._write(wire.encode(wire.Connack(wire.CONNACK_ACCEPTED)))
        self._dead_after = self._keep_alive
        self._cancel_timer()
        self._timer = self.clock.callLater(self._dead_after, self._check_alive)
        queued, self._queued = self._queued, []
        for packet in queued:
            if self.state != CONNECTED:
                return
            self._handle(packet)

    def _refuse(self, code: int, reason: str) -> None:
        self._write(wire.encode(wire.Connack(code)))
        self.close(reason)

    def _on_publish(self, packet: wire.Publish) -> None:
        if packet.qos > 1:
            self.close("QoS 2 PUBLISH")
            return
        topic = packet.topic
        if not self.router.publish(self.client, topic, topic.encode("utf-8"), packet.payload, packet.qos):
            self.close("publish to a forbidden topic")
            return
        if packet.qos == 1:
            self._write(wire.encode(wire.Puback(packet.packet_id)))

    def _on_subscribe(self, packet: wire.Subscribe) -> None:
        codes = self.router.subscribe(self.client, packet.topics)
        self._write(wire.encode(wire.Suback(packet.packet_id, tuple(codes))))
        self.router.subscribed(self.client, packet.topics)

    # -- keep-alive ----------------------------------------------------------

    def _check_alive(self) -> None:
        self._timer = None
        if self.state == CLOSED:
            return
        if self.state != CONNECTED and self.state != AUTHENTICATING:
            self.log.info("no CONNECT from {peer} in time", peer=self.peer)
            self.close("no CONNECT")
            return
        idle = self.clock.seconds() - self._last_seen
        if idle >= self._dead_after:
            self.log.info("keep-alive expired for {peer}", peer=self.peer)
            self.close("keep-alive expired")
            return
        self._timer = self.clock.callLater(self._dead_after - idle, self._check_alive)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- output (the router calls these) -------------------------------------

    def deliver(self, topic: bytes, payload: bytes, qos: int) -> None:
        if self.state != CONNECTED:
            return
        packet_id = None
        if qos:
            self._next_id = self._next_id % 65535 + 1
            packet_id = self._next_id
        self._send(wire.encode_publish(topic, payload, qos, packet_id))

    def close(self, reason: str) -> None:
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self._queued = []
        self._cancel_timer()
        if self.client is not None:
            self.router.detach(self.client)
        self._disconnect(reason)

    def connection_lost(self) -> None:
        if self.state == CLOSED:
            return
        if self.client is not None:
            p = self.client.principal
            self.log.info("{role} {id} disconnected", role=p.role, id=p.id)
        self.close("connection lost")

    def _write(self, data: bytes) -> None:
        if self.state != CLOSED:
            self._send(data)


class MQTTServerProtocol(WebSocketServerProtocol):
    """Autobahn adapter: WebSocket binary messages <-> :class:`MQTTSession`.

    Session state lives on ``self.mqtt``; Autobahn owns most other names.
    """

    mqtt: MQTTSession | None = None

    def onConnect(self, request):
        if "mqtt" not in request.protocols:
            self.factory.log.info("refusing WebSocket from {peer}: no mqtt subprotocol", peer=self.peer)
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST, "subprotocol 'mqtt' required")
        return "mqtt"

    def onOpen(self):
        gw = self.factory.gateway
        self.mqtt = MQTTSession(
            gw.router,
            gw.authenticator,
            self.factory.reactor,
            self._send_binary,
            self._close,
            peer=self.peer,
            max_packet=gw.max_packet,
        )

    def _send_binary(self, data: bytes) -> None:
        self.sendMessage(data, isBinary=True)

    def _close(self, reason: str) -> None:
        self.sendClose(code=1000)

    def onMessage(self, payload, isBinary):
        if self.mqtt is None:
            return
        if not isBinary:
            self.factory.log.info("closing {peer}: text WebSocket message", peer=self.peer)
            self.mqtt.close("text message")
            return
        self.mqtt.data_received(payload)

    def onClose(self, wasClean, code, reason):
        if self.mqtt is not None:
            self.mqtt.connection_lost()


class MQTTWebSocketFactory(WebSocketServerFactory):
    protocol = MQTTServerProtocol
    log = Logger()

    def __init__(self, gateway, reactor, url: str = "ws://localhost/mqtt"):
        super().__init__(url, protocols=["mqtt"], reactor=reactor)
        self.gateway = gateway
        # One MQTT packet (plus a few headers' worth of slack for packets
        # sharing its message) is the most a WebSocket message may carry, so
        # neither layer ever buffers more than the packet cap.
        limit = gateway.max_packet + 64
        self.setProtocolOptions(
            maxFramePayloadSize=limit,
            maxMessagePayloadSize=limit,
            autoFragmentSize=0,
            utf8validateIncoming=False,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
            tcpNoDelay=True,
            autoPingInterval=0,  # liveness is MQTT keep-alive, never WebSocket pings
            perMessageCompressionAccept=lambda offers: None,
        )
