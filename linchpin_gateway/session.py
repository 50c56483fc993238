"""One client's MQTT 3.1.1 session.

:class:`MQTTSession` is transport-agnostic: it takes bytes, writes bytes
through a ``send`` callable and ends the connection through ``disconnect``.
It owns the CONNECT handshake, keep-alive and packet ids, and hands routing
to the :class:`~linchpin_gateway.router.Router`.  The WebSocket adapter
(:mod:`linchpin_gateway.websocket`) only moves messages in and out of it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from twisted.logger import Logger

from linchpin_common.contract import wire
from linchpin_common.contract.topics import MAX_CONNECTORS, is_connector_name
from linchpin_common.machine import Transitions

from .auth import TooManyFailures, TooManyInFlight
from .config import DEFAULTS
from .hashing import Overloaded
from .metrics import Stats
from .router import DEVICE
from .store import StoreUnavailable

class State(enum.Enum):
    AWAIT_CONNECT = "await_connect"  # WebSocket open, no CONNECT yet
    AUTHENTICATING = "authenticating"  # a CONNECT is being checked; reading paused
    CONNECTED = "connected"  # CONNACK 0 sent: relaying
    CLOSED = "closed"


AWAIT_CONNECT, AUTHENTICATING, CONNECTED, CLOSED = State

# The session's life cycle (the project's one machine idiom,
# linchpin_common.machine)::
#
#   AWAIT_CONNECT --connect--> AUTHENTICATING --accept--> CONNECTED --close--> CLOSED
#        |                          |
#        '--refuse / close--> CLOSED <--refuse / close--'      (accept/refuse in CLOSED: stay)
#
# A pair not listed is a bug and raises IllegalTransition.  Packets of an
# established session are not inputs here: the relay path only reads
# ``state``.
_LIFE = Transitions("MQTT session", State, {
    (AWAIT_CONNECT, "connect"): AUTHENTICATING,  # a CONNECT worth checking; reading paused
    (AWAIT_CONNECT, "refuse"): CLOSED,  # CONNACK 1/2/3/5 without a password check
    (AUTHENTICATING, "accept"): CONNECTED,  # CONNACK 0, reading resumed
    (AUTHENTICATING, "refuse"): CLOSED,  # CONNACK 3/4
    (CLOSED, "accept"): CLOSED,  # the client left while its password was checked
    (CLOSED, "refuse"): CLOSED,
    (AWAIT_CONNECT, "close"): CLOSED,
    (AUTHENTICATING, "close"): CLOSED,
    (CONNECTED, "close"): CLOSED,
})

DEAD_AFTER = 450.0  # silence allowed for keep-alive 0 or > 300
MAX_KEEP_ALIVE = 300
MAX_PRE_AUTH = 4096  # bytes a client may send after its CONNECT before CONNACK
# The WebSocket message cap until CONNACK 0: room for any CONNECT a client
# may send (with the MAX_PRE_AUTH bytes behind it), and all a connection
# that has not logged in can make the gateway hold for a message in progress.
PRE_LOGIN_MESSAGE = 64 * 1024
MAX_QUEUED = 64  # packets pipelined behind a CONNECT that is being checked
_PINGRESP = wire.encode(wire.Pingresp())


@dataclass
class Limits:
    """Per-session bounds; one instance is shared by every session of a gateway."""

    max_packet: int = DEFAULTS.max_message_size
    max_outbound: int = DEFAULTS.max_outbound
    connect_timeout: float = DEFAULTS.connect_timeout
    max_pre_auth: int = MAX_PRE_AUTH
    max_instance_sessions: int | None = None  # live device sessions per instance


class MQTTSession:
    """One MQTT session.

    ``transport`` provides ``send(bytes, alone)`` (``alone``: a message that
    comes by itself, such as a PINGRESP, may skip the transport's batching),
    ``disconnect(reason, abort)``,
    ``pause_reading()`` and ``resume_reading()``.  The transport in turn
    tells the session when its socket backs up (:meth:`output_paused`) and
    drains (:meth:`output_resumed`).  ``logins`` is the
    :class:`~linchpin_gateway.auth.LoginGuard` (``login(host, username,
    password)``).

    Before CONNACK the session holds only the credentials being checked:
    reading is paused while they are, and a client that sends more than
    ``max_pre_auth`` bytes after its CONNECT is cut.
    """

    log = Logger()

    def __init__(self, router, logins, clock, transport, peer: str = "?", host: str = "?",
                 limits: Limits | None = None, stats: Stats | None = None, on_accepted=None,
                 connect_deadline: float | None = None, repeats=None):
        """``repeats``: a :class:`~linchpin_common.repeats.Repeats` the
        sessions share, for warnings a storm repeats (refusals)."""
        self.router = router
        self.logins = logins
        self.clock = clock
        self.transport = transport
        self.peer = peer
        self.host = host  # rate limits are per address
        self.limits = limits or Limits()
        self.stats = stats or Stats()
        self.on_accepted = on_accepted
        self._warn_repeated = repeats.warn if repeats is not None else self.log.warn
        # Until CONNACK 0 a packet in progress holds no more than a message may.
        self.parser = wire.Parser(min(PRE_LOGIN_MESSAGE, self.limits.max_packet))
        self.state = AWAIT_CONNECT
        self._out_paused = False
        self._out_queued = 0  # bytes written since the socket backed up
        self._held = False  # reading paused because our connector is backed up
        self.client = None  # router.Client once accepted
        self._client_id = ""  # the CONNECT's client identifier: a connector's name
        self._queued: list = []
        self._pre_auth = 0  # bytes received after the CONNECT, before CONNACK
        self._next_id = 0
        self._last_seen = clock.seconds()
        self._dead_after = self.limits.connect_timeout
        deadline = self.limits.connect_timeout if connect_deadline is None else max(0.0, connect_deadline)
        self._timer = clock.callLater(deadline, self._check_alive)

    def _go(self, event: str) -> State:
        """Take the transition for ``event``; returns the state it left."""
        before = self.state
        self.state = _LIFE.next(before, event)
        return before

    # -- input ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.state is not CONNECTED:
            self._data_before_connack(data)
            return
        # The relay path: nothing here but what every message needs.
        # Packets complete before any bad bytes are handled first, so the
        # outcome does not depend on how the stream was split.
        packets, error = self.parser.feed_to_error(data)
        if packets:
            self._last_seen = self.clock.seconds()
        self._handle_all(packets)
        if error is not None and self.state is not CLOSED:
            self._malformed(error)

    def _malformed(self, error) -> None:
        self.log.info("closing {peer}: malformed MQTT: {reason}", peer=self.peer, reason=str(error))
        self.close("malformed packet")

    def _data_before_connack(self, data: bytes) -> None:
        state = self.state
        if state is CLOSED:
            return
        if state is AUTHENTICATING:
            self._pre_auth += len(data)
            if self._pre_auth > self.limits.max_pre_auth:
                self._too_much_before_connack()
                return
        packets, error = self.parser.feed_to_error(data)
        if packets:
            self._last_seen = self.clock.seconds()
        if state is AWAIT_CONNECT and packets and type(packets[0]) is wire.Connect:
            # What came with the CONNECT (whole packets or the start of one)
            # counts towards the bytes allowed before CONNACK.
            after = self.parser.buffered
            for packet in packets[1:]:
                if after > self.limits.max_pre_auth:
                    break
                after += len(wire.encode(packet))
            self._pre_auth = after
        self._handle_all(packets)
        if error is not None and self.state is not CLOSED:
            self._malformed(error)
        elif self.state is AUTHENTICATING and self._pre_auth > self.limits.max_pre_auth:
            self._too_much_before_connack()

    def _too_much_before_connack(self) -> None:
        self.log.info("closing {peer}: more than {n} bytes before CONNACK", peer=self.peer,
                      n=self.limits.max_pre_auth)
        self.close("too much data before CONNACK")

    def _handle_all(self, packets) -> None:
        for packet in packets:
            if self.state is CLOSED:
                return
            if self.state is AUTHENTICATING:
                if len(self._queued) >= MAX_QUEUED:  # 4 KiB of tiny packets is still many objects
                    self._too_much_before_connack()
                    return
                self._queued.append(packet)
            else:
                self._handle(packet)

    def _handle(self, packet) -> None:
        if self.state is AWAIT_CONNECT:
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
            self._write(_PINGRESP, alone=True)  # an idle session's keep-alive: out at once
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
        self._client_id = packet.client_id
        keep_alive = packet.keep_alive
        self._keep_alive = 1.5 * keep_alive if 0 < keep_alive <= MAX_KEEP_ALIVE else DEAD_AFTER
        username = packet.username or ""
        try:
            password = (packet.password or b"").decode("utf-8")
        except UnicodeDecodeError:
            password = ""
        try:
            d = self.logins.login(self.host, username, password)
        except TooManyFailures:
            self.stats.rate_limited += 1
            self.log.debug("too many failed logins from {host}: CONNACK 5", host=self.host)
            self._refuse(wire.CONNACK_NOT_AUTHORIZED, "too many failed logins")
            return
        except TooManyInFlight:
            self.stats.rate_limited += 1
            self.log.debug("too many logins in progress from {host}: CONNACK 3", host=self.host)
            self._refuse(wire.CONNACK_SERVER_UNAVAILABLE, "too many logins in progress")
            return
        self._go("connect")
        if not d.called:
            self.transport.pause_reading()  # nothing more is read until CONNACK
        d.addCallbacks(self._authenticated, self._auth_error)
        d.addErrback(self._crashed)

    def _overloaded(self) -> None:
        self._warn_repeated("password checking overloaded; refusing {peer}", peer=self.peer)
        self._refuse(wire.CONNACK_SERVER_UNAVAILABLE, "overloaded")

    def _auth_error(self, failure) -> None:
        if self.state is CLOSED:
            return
        if failure.check(Overloaded):
            self._overloaded()
        elif failure.check(StoreUnavailable):
            self._warn_repeated("store unavailable; refusing {peer}", peer=self.peer)
            self._refuse(wire.CONNACK_SERVER_UNAVAILABLE, "store unavailable")
        else:
            self.log.failure("credential check failed for {peer}", failure, peer=self.peer)
            self._refuse(wire.CONNACK_SERVER_UNAVAILABLE, "store error")

    def _crashed(self, failure) -> None:
        self.log.failure("session error for {peer}", failure, peer=self.peer)
        self.close("internal error")

    def _authenticated(self, principal) -> None:
        if principal is None:
            if self.state is not CLOSED:
                self.stats.auth_failures += 1
                self.log.debug("auth failure from {peer}", peer=self.peer)
            self._refuse(wire.CONNACK_BAD_CREDENTIALS, "bad credentials")
            return
        cap = self.limits.max_instance_sessions
        if (cap is not None and principal.role == DEVICE and self.state is not CLOSED
                and not self.router.may_attach(principal, cap)):
            self.stats.rate_limited += 1
            self.log.info("instance {instance} has {n} live device sessions; refusing {peer}",
                          instance=principal.instance_id, n=cap, peer=self.peer)
            self._refuse(wire.CONNACK_SERVER_UNAVAILABLE, "too many sessions for this instance")
            return
        if principal.role == DEVICE or self.state is CLOSED:
            self._accept(principal)
            return
        name = self._client_id
        if not is_connector_name(name):
            self.log.info("connector of {instance} with a client identifier that cannot name it; refusing {peer}",
                          instance=principal.instance_id, peer=self.peer)
            self._refuse(wire.CONNACK_IDENTIFIER_REJECTED, "connector client identifier not 1-64 of A-Z a-z 0-9 . _ -")
            return
        # Other nodes may hold sessions of the instance: asked before CONNACK
        # (reading stays paused meanwhile).
        d = self.router.connector_room(principal, name)
        d.addCallback(self._room, principal, name)
        d.addErrback(self._crashed)

    def _room(self, room: bool, principal, name: str) -> None:
        if not room:
            if self.state is not CLOSED:
                self.stats.rate_limited += 1
                self.log.info("instance {instance} has {n} connector sessions; refusing {peer}",
                              instance=principal.instance_id, n=MAX_CONNECTORS, peer=self.peer)
            self._refuse(wire.CONNACK_SERVER_UNAVAILABLE, "too many connector sessions for this instance")
            return
        self._accept(principal, name)

    def _accept(self, principal, name: str = "") -> None:
        if self._go("accept") is CLOSED:
            return
        if self.on_accepted is not None:
            self.on_accepted()
        self.parser.max_remaining_length = self.limits.max_packet
        self.client = self.router.attach(principal, self, name)
        self.log.info(
            "{role} {id} connected from {peer}", role=principal.role, id=principal.id, peer=self.peer
        )
        self._write(wire.encode(wire.Connack(wire.CONNACK_ACCEPTED)))
        self._dead_after = self._keep_alive
        self._cancel_timer()
        self._timer = self.clock.callLater(self._dead_after, self._check_alive)
        queued, self._queued = self._queued, []
        self._pre_auth = 0
        for packet in queued:
            if self.state is not CONNECTED:
                return
            self._handle(packet)
        if self.state is CONNECTED and not self._held:
            self.transport.resume_reading()

    def _refuse(self, code: int, reason: str) -> None:
        """CONNACK ``code`` and close, before the session was accepted."""
        if self.state is CLOSED:
            self._go("refuse")  # the client left while its password was checked
            return
        self._write(wire.encode(wire.Connack(code)))
        self._end(self._go("refuse"), reason)

    def _on_publish(self, packet: wire.Publish) -> None:
        if packet.qos > 1:
            self.close("QoS 2 PUBLISH")
            return
        if not self.router.publish(self.client, packet.topic, packet.payload, packet.qos, packet.raw):
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
        if self.state is CLOSED:
            return
        if self.state is AWAIT_CONNECT:
            self.log.info("no CONNECT from {peer} in time", peer=self.peer)
            self.close("no CONNECT")
            return
        if self.state is AUTHENTICATING or self._held:
            # Waiting for its password check (a bounded queue) or not read
            # by us: either way the silence is ours, not the client's.
            self._timer = self.clock.callLater(self._dead_after, self._check_alive)
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

    def deliver(self, topic: bytes, payload: bytes, qos: int, raw: bytes | None = None) -> None:
        """Send a PUBLISH; ``raw``, when given, is that same QoS 0 packet
        already encoded (the one received, forwarded as it is)."""
        if self.state is not CONNECTED:
            return
        if raw is not None and qos == 0:
            self._write(raw)
            return
        packet_id = None
        if qos:
            self._next_id = self._next_id % 65535 + 1
            packet_id = self._next_id
        self._write(wire.encode_publish(topic, payload, qos, packet_id))

    def close(self, reason: str, abort: bool = False) -> None:
        if self.state is CLOSED:
            return
        self._end(self._go("close"), reason, abort)

    def _end(self, before: int, reason: str, abort: bool = False) -> None:
        self._queued = []
        self._cancel_timer()
        if self.client is not None:
            self.router.detach(self.client)
        if before is AUTHENTICATING:
            self.transport.resume_reading()  # let the transport see the close
        self.transport.disconnect(reason, abort)

    def connection_lost(self) -> None:
        if self.state is CLOSED:
            return
        if self.client is not None:
            p = self.client.principal
            self.log.info("{role} {id} disconnected", role=p.role, id=p.id)
        self.close("connection lost")

    def _write(self, data: bytes, alone: bool = False) -> None:
        if self.state is CLOSED:
            return
        if self._out_paused:
            self._out_queued += len(data)
            if self._out_queued > self.limits.max_outbound:
                self.stats.slow_consumers += 1
                self.log.info("{peer} stopped reading ({n} bytes waiting); disconnecting", peer=self.peer,
                              n=self._out_queued)
                self.close("slow consumer", abort=True)
                return
        self.transport.send(data, alone)

    # -- flow control --------------------------------------------------------

    def output_paused(self) -> None:
        """The socket's send buffer is full: count what we queue from now on.

        (Twisted calls this again on every write while the buffer stays full.)
        """
        if self._out_paused:
            return
        self._out_paused = True
        self._out_queued = 0
        if self.client is not None and self.client.attached:
            self.router.backed_up(self.client, True)

    def output_resumed(self) -> None:
        self._out_paused = False
        self._out_queued = 0
        if self.client is not None and self.client.attached:
            self.router.backed_up(self.client, False)

    def hold(self) -> None:
        """Stop reading from this client (its connector cannot take more)."""
        if not self._held and self.state is not CLOSED:
            self._held = True
            self.transport.pause_reading()

    def release(self) -> None:
        if self._held:
            self._held = False
            self._last_seen = self.clock.seconds()
            if self.state is not CLOSED:
                self.transport.resume_reading()
