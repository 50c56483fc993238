"""The thin Autobahn adapter that moves WebSocket messages in and out of an
:class:`~linchpin_gateway.session.MQTTSession`, and the factory that owns the
gateway's WebSocket limits and live connections."""

from __future__ import annotations

import types

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import TrafficStats
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from linchpin_common.contract import wire
from linchpin_common.repeats import Repeats
from linchpin_common.sendnow import write_now
from linchpin_common.slots import Slots
from linchpin_common.wsframes import LeanReceive

from .config import DEFAULTS
from .ratelimit import address_key
from .session import PRE_LOGIN_MESSAGE, Limits, MQTTSession


_SHORT_HEADERS = [bytes((0x82, n)) for n in range(126)]

# What Autobahn's opening handshake leaves on a server protocol and reads
# nowhere else (autobahn.websocket.protocol: processHandshake and
# succeedHandshake only): dropped once the WebSocket is open, about 0.5 KiB
# a session.
HANDSHAKE_LEFTOVERS = ("http_status_line", "http_request_uri", "http_request_path", "http_request_params",
                       "http_request_host", "_wskey", "websocket_origin", "websocket_protocols",
                       "websocket_extensions")
# Autobahn counts each connection's traffic in an object of its own that
# nothing here reads: open sessions share one (0.35 KiB less a session).
SHARED_TRAFFIC_STATS = TrafficStats()


def _binary_frame_header(n: int) -> bytes:
    """RFC 6455 header of a final, unmasked binary frame of ``n`` bytes."""
    if n < 126:
        return _SHORT_HEADERS[n]
    if n < 65536:
        return b"\x82\x7e" + n.to_bytes(2, "big")
    return b"\x82\x7f" + n.to_bytes(8, "big")


@implementer(IPushProducer)
class _OutputWatch:
    """Registered with the socket: told when its send buffer fills and drains."""

    def __init__(self, protocol: MQTTServerProtocol):
        self.protocol = protocol

    def pauseProducing(self):
        self.protocol.output_backed_up(True)

    def resumeProducing(self):
        self.protocol.output_backed_up(False)

    def stopProducing(self):
        pass


class MQTTServerProtocol(LeanReceive, WebSocketServerProtocol):
    """Autobahn adapter: WebSocket binary messages <-> :class:`MQTTSession`.

    Autobahn does the opening handshake, sends what is not MQTT (pongs, the
    close handshake) and owns the closing state; once open, frames are read
    by :class:`~linchpin_common.wsframes.LeanReceive`.  Session state lives
    on ``self.mqtt``; Autobahn owns most other names.
    """

    mqtt: MQTTSession | None = None
    _unauthenticated = False
    _host_key: str | None = None  # per-address limits key
    _accepted_at: float | None = None  # when the socket was accepted (handed over by the HTTP channel)
    _release_connection = None  # gives back the address's connection slot
    _backed_up = False  # the socket's send buffer is full
    _pong_owed: bytes | None = None  # the latest ping's payload, unanswered while backed up

    def connectionMade(self):
        super().connectionMade()
        self.factory.live.add(self)
        # The HTTP channel that accepted the upgrade was the socket's
        # producer; from now on the socket reports its backlog to us.
        self.transport.unregisterProducer()
        self.transport.registerProducer(_OutputWatch(self), True)

    def onConnect(self, request):
        f = self.factory
        if "mqtt" not in request.protocols:
            f.log.info("refusing WebSocket from {peer}: no mqtt subprotocol", peer=self.peer)
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST, "subprotocol 'mqtt' required")
        full = f.full(self.peer)
        if full:
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, full)
        key = self._host_key = address_key(self._host())
        if not f.pending_per_address.acquire(key):
            f.log.info("{host} has {n} sessions awaiting CONNACK; refusing {peer}", host=key,
                       n=f.pending_per_address.per_key, peer=self.peer)
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "too many pending logins from this address")
        f.unauthenticated += 1
        self._unauthenticated = True
        return "mqtt"

    def _host(self) -> str:
        return getattr(self.transport.getPeer(), "host", self.peer)

    def onOpen(self):
        for name in HANDSHAKE_LEFTOVERS:
            setattr(self, name, None)
        self.trafficStats = SHARED_TRAFFIC_STATS
        f = self.factory
        limits = f.limits
        deadline = limits.connect_timeout
        if self._accepted_at is not None:  # the HTTP request's time counts too
            deadline -= self.factory.reactor.seconds() - self._accepted_at
        self.mqtt = MQTTSession(f.router, f.logins, self.factory.reactor, self, peer=self.peer,
                                host=self._host(), limits=limits, stats=f.stats, on_accepted=self._accepted,
                                connect_deadline=deadline, repeats=f.repeats)
        self.start_lean_receive(max_message=min(PRE_LOGIN_MESSAGE, self.maxMessagePayloadSize))

    def _accepted(self):
        if self._frames is not None:  # logged in: the whole message cap
            self._frames.max_message = self.maxMessagePayloadSize
        if self._unauthenticated:
            self._unauthenticated = False
            self.factory.unauthenticated -= 1
            self.factory.pending_per_address.release(self._host_key)

    def output_backed_up(self, full: bool) -> None:
        """The socket's send buffer filled (or drained)."""
        self._backed_up = full
        if self.mqtt is not None:
            if full:
                self.mqtt.output_paused()
            else:
                self.mqtt.output_resumed()
        if not full and self._pong_owed is not None:
            payload, self._pong_owed = self._pong_owed, None
            self.sendPong(payload)

    def onPing(self, payload):
        # A pong per ping would let a client that pings and never reads fill
        # the socket's buffer without bound (pongs bypass the session's
        # outbound cap).  RFC 6455 section 5.5.3 allows answering only the
        # latest ping: while backed up, that one is answered once it drains.
        if self._backed_up:
            self._pong_owed = payload
            return
        super().onPing(payload)

    # -- what MQTTSession needs of its transport --

    def send(self, data: bytes, alone: bool = False) -> None:
        """``alone``: a message that comes by itself (a PINGRESP on an idle
        session) goes out at once when nothing else waits (``write_now``);
        relayed messages come in runs, where Twisted's buffering lets one
        send carry many (sending each at once took the relay from 9 to
        21 us of CPU per round trip at 256 B)."""
        # The hot path frames its messages itself: one unmasked binary frame
        # whose header and payload go to the transport as they are, without
        # the payload copy and per-message bookkeeping of sendMessage.  That
        # is all sendMessage would do here: the factory never compresses,
        # fragments or masks server frames.
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            return  # closing: nothing more goes out
        if self.send_queue:  # Autobahn has queued frames of its own: keep the order
            self.sendMessage(data, isBinary=True)
            return
        if alone:
            write_now(self.transport, _binary_frame_header(len(data)), data)
        else:
            self.transport.writeSequence((_binary_frame_header(len(data)), data))

    def disconnect(self, reason: str, abort: bool = False) -> None:
        if abort:
            self.dropConnection(abort=True)
        else:
            self.sendClose(code=1000)

    def pause_reading(self) -> None:
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        self.transport.resumeProducing()

    # -- Autobahn callbacks --

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

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if self.mqtt is not None:
            self.mqtt.connection_lost()
        self._accepted()
        if self._release_connection is not None:
            self._release_connection()
            self._release_connection = None
        self.factory.gone(self)


def websocket_options(max_packet: int) -> dict:
    """The gateway's Autobahn server options (the benchmark's bare relay uses
    the same, so it measures the same WebSocket layer)."""
    # One MQTT packet (plus a few headers' worth of slack for packets sharing
    # its message) is the most a WebSocket message may carry, so neither
    # layer ever buffers more than the packet cap. The MQTT client uses the
    # same limit.
    limit = wire.websocket_limit(max_packet)
    return dict(
        maxFramePayloadSize=limit,
        maxMessagePayloadSize=limit,
        autoFragmentSize=0,
        utf8validateIncoming=False,
        openHandshakeTimeout=10,
        closeHandshakeTimeout=5,
        tcpNoDelay=True,
        autoPingInterval=0,  # liveness is MQTT keep-alive, never WebSocket pings
        perMessageCompressionAccept=_no_compression,
        # Credentials travel in CONNECT, never in cookies: any Origin may
        # connect, including `null` (pages loaded from file:// in hybrid apps).
        allowedOrigins=["*"],
        allowNullOrigin=True,
    )


def _no_compression(offers):
    return None


class MQTTWebSocketFactory(WebSocketServerFactory):
    protocol = MQTTServerProtocol
    log = Logger()

    def __init__(self, reactor, router, logins, limits: Limits, stats, *, url: str = "ws://localhost/mqtt",
                 max_sessions: int = DEFAULTS.max_sessions, max_unauthenticated: int = DEFAULTS.max_pending_logins,
                 pending_per_address: int = DEFAULTS.pending_logins_per_address):
        super().__init__(url, protocols=["mqtt"], reactor=reactor)
        self.router = router
        self.logins = logins
        self.limits = limits
        self.stats = stats
        self.max_sessions = max_sessions
        self.max_unauthenticated = max_unauthenticated
        self.pending_per_address = Slots(pending_per_address)
        self._handover = None  # the HTTP channel whose socket is being upgraded
        self.live: set[MQTTServerProtocol] = set()
        self.unauthenticated = 0
        self._drained: list[defer.Deferred] = []
        self.repeats = Repeats(self.log, reactor)  # refusals come by the thousand in a connect storm
        self.setProtocolOptions(**websocket_options(limits.max_packet))

    def full(self, peer: str) -> str | None:
        """Why a new WebSocket from ``peer`` is refused now (503), logged;
        None if it may open. Asked before the upgrade (api.MQTTResource),
        where refusing costs least, and again by the protocol."""
        if len(self.live) > self.max_sessions:
            self.repeats.warn("session limit {n} reached; refusing {peer}", n=self.max_sessions, peer=peer)
            return "too many sessions"
        if self.unauthenticated >= self.max_unauthenticated:
            self.repeats.warn("{n} sessions await authentication; refusing {peer}", n=self.unauthenticated, peer=peer)
            return "too many pending logins"
        return None

    def setProtocolOptions(self, **options):
        """Autobahn copies some 40 options from its factory into every
        connection's ``__dict__`` unless the protocol class has them; the
        protocol built here is a subclass holding this factory's options as
        class attributes, which saves about 1.5 KiB a session. Its
        ``CONFIG_ATTRS`` is empty: there is nothing left to copy, and
        Autobahn pretty-prints the list it walks for a debug line on every
        connection, logged or not (a tenth of the reactor's time while a
        restarted node takes its devices back)."""
        super().setProtocolOptions(**options)

        def as_class_attribute(value):
            # a function (perMessageCompressionAccept) must not become a method
            return staticmethod(value) if isinstance(value, types.FunctionType) else value

        options = {name: as_class_attribute(getattr(self, name)) for name in MQTTServerProtocol.CONFIG_ATTRS}
        self.protocol = type(MQTTServerProtocol.__name__, (MQTTServerProtocol,), {**options, "CONFIG_ATTRS": ()})

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        channel, self._handover = self._handover, None
        if channel is not None:
            protocol._accepted_at = getattr(channel, "accepted_at", None)
            protocol._release_connection = getattr(channel, "hand_over_slot", lambda: None)()
        return protocol

    def gone(self, protocol: MQTTServerProtocol) -> None:
        self.live.discard(protocol)
        if not self.live:
            waiters, self._drained = self._drained, []
            for d in waiters:
                d.callback(None)

    def close_all(self, timeout: float) -> defer.Deferred:
        """Close every WebSocket cleanly; fires once all are gone (those still
        open after ``timeout`` seconds are cut)."""
        for protocol in list(self.live):
            if protocol.mqtt is not None:
                protocol.mqtt.close("gateway shutting down")
            else:
                protocol.dropConnection(abort=True)
        if not self.live:
            return defer.succeed(None)
        d = defer.Deferred()
        self._drained.append(d)

        def cut():
            for protocol in list(self.live):
                protocol.dropConnection(abort=True)

        timer = self.reactor.callLater(timeout, cut)

        def stop_timer(result):
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(stop_timer)
