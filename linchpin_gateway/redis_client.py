"""The Redis client under :class:`.bus.RedisBus`: txredisapi, held to three
rules of ours.

txredisapi frames the commands and replies, runs AUTH and SELECT on every
new connection and reconnects with backoff (a ``ClientService`` per
connection). Used as its lazy handlers, though, it does what the gateway
must not: a command issued while Redis is down waits in its queue until the
connection is back (a queue without bound), and a subscriber that reconnects
forgets its channels. So the bus does not use the handlers. It holds one
command connection and one pub/sub connection, each a protocol of ours on
txredisapi's, built by a factory of ours on txredisapi's, and:

- **fails fast**: ``current`` is the connection once AUTH and SELECT have
  succeeded, None otherwise; with None a publish is dropped and every other
  call fails at once with :class:`NotConnected` (the bus checks, txredisapi
  never gets to queue);
- **subscribes again**: the pub/sub protocol sends SUBSCRIBE for every
  channel of the shared set as soon as it is ready, on the first connection
  and on every reconnection, before the bus is announced up;
- **bounds what it writes**: each connection registers a push producer on
  its socket, so it learns when the socket's send buffer is full; from then
  until it drains, at most ``MAX_BUFFERED`` bytes of publishes are written,
  the rest is dropped (Redis not reading must not grow the gateway's memory).

Where txredisapi would stop reconnecting for good (AUTH or SELECT refused),
ours logs the refusal and keeps trying with backoff.

Everything is bytes: channel names, messages and bulk replies (no charset,
no number conversion). With hiredis installed (a dependency) txredisapi
parses replies with it.

Every message between nodes is one PUBLISH out of one node and one pub/sub
message into another, so both skip txredisapi's per-command machinery:

- the PUBLISH is packed by hiredis and written behind ``CLIENT REPLY SKIP``,
  so Redis sends no reply the node would have to read, parse and match to a
  reply slot (when Redis refuses ``CLIENT REPLY``, e.g. an ACL without it,
  which the connection finds out before it is ready, each PUBLISH takes a
  reply slot nobody waits on instead);
- the pub/sub connection reads with its own hiredis reader and hands each
  ``message`` to the bus straight from it; other replies (to SUBSCRIBE and
  UNSUBSCRIBE) go on to txredisapi.
"""

from __future__ import annotations

import hiredis
import txredisapi
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

MAX_BUFFERED = 8 * 1024 * 1024  # bytes written while Redis does not read before publishes are dropped
SUBSCRIBE_BATCH = 1000  # channels per SUBSCRIBE when subscribing again

class NotConnected(txredisapi.ConnectionError):
    """The command was not sent: no connection to Redis right now."""


def _ignore(failure):
    """Replies nobody waits for: a lost connection fails them, and that is all."""
    return None


def _lost(failure):
    """The connection went before it was ready: nothing to do, it is made again."""
    failure.trap(txredisapi.ConnectionError)


@implementer(IPushProducer)
class _Backlog:
    """Told by the socket when its send buffer fills and drains; counts what
    is written in between."""

    def __init__(self):
        self.paused = False
        self.buffered = 0

    def pauseProducing(self):
        if not self.paused:
            self.paused = True
            self.buffered = 0

    def resumeProducing(self):
        self.paused = False
        self.buffered = 0

    def stopProducing(self):
        pass

    def admit(self, size: int) -> bool:
        if not self.paused:
            return True
        if self.buffered + size > MAX_BUFFERED:
            return False
        self.buffered += size
        return True


class _Ours:
    """What both our protocols add to txredisapi's (a mixin placed first)."""

    factory: Factory

    def connectionMade(self):
        # Publishes get no reply (CLIENT REPLY SKIP), so no reply carries
        # Redis's ACK back: with Nagle's algorithm a publish could wait for a
        # delayed ACK of the one before.
        transport = self.transport
        while transport is not None and not hasattr(transport, "setTcpNoDelay"):
            transport = getattr(transport, "transport", None)  # under TLS: the TCP transport
        if transport is not None:
            transport.setTcpNoDelay(True)
        self.backlog = _Backlog()
        self.transport.registerProducer(self.backlog, True)
        super().connectionMade()  # AUTH and SELECT, then whenConnected fires
        self.whenConnected().addCallback(self.prepare).addCallbacks(self.factory.ready, _lost)

    def prepare(self, _):
        """What the connection needs once AUTH and SELECT passed, before it
        is ready; fires with the protocol."""
        return self

    def connectionLost(self, reason):
        super().connectionLost(reason)  # fails the replies still awaited
        self.factory.lost(self)


_SKIP = hiredis.pack_command((b"CLIENT", b"REPLY", b"SKIP"))


class CommandProtocol(_Ours, txredisapi.RedisProtocol):
    """The command connection."""

    skip_replies = False  # Redis takes CLIENT REPLY SKIP on this connection

    def prepare(self, _):
        # CLIENT REPLY ON changes nothing and answers OK where CLIENT REPLY
        # is allowed; an error says publishes must keep their replies.
        d = self.execute_command(b"CLIENT", b"REPLY", b"ON")

        def allowed(_):
            self.skip_replies = True
            return self

        def refused(failure):
            failure.trap(txredisapi.ResponseError)
            self.factory.log.warn("Redis refused CLIENT REPLY ({why}): each PUBLISH gets a reply",
                                  why=failure.getErrorMessage())
            return self

        return d.addCallbacks(allowed, refused)

    def publish_or_drop(self, channel: bytes, data: bytes) -> bool:
        """PUBLISH without waiting for the reply; False (not written) while
        the socket holds ``MAX_BUFFERED`` bytes Redis has not read.

        This is the hot path of every message between nodes, so it skips
        ``execute_command``'s two Deferreds and argument encoding: the
        command is packed by hiredis behind ``CLIENT REPLY SKIP``, so no
        reply comes. (Without it, its reply slot is taken on txredisapi's
        reply queue, as every command written must have one, with nobody
        waiting on it; a lost connection fills it with an error value.)"""
        command = hiredis.pack_command((b"PUBLISH", channel, data))
        if self.skip_replies:
            command = _SKIP + command
        if not self.backlog.admit(len(command)):
            return False
        self.transport.write(command)
        if not self.skip_replies:
            self.replyQueue.get()
        return True


class SubscriberProtocol(_Ours, txredisapi.SubscriberProtocol):
    """The pub/sub connection: its factory subscribes it again to every
    channel when it is ready."""

    def dataReceived(self, data, unpause=False):
        reader = self._reader
        if data:
            reader.feed(data)
        on_message = self.factory.on_message
        reply = reader.gets()
        while reply is not False:
            if type(reply) is list and len(reply) == 3 and reply[0] == b"message":
                on_message(reply[1], reply[2])
            else:  # as txredisapi's reader does it
                reply = self.tryConvertData(reply)
                if reply == "QUEUED":
                    self.transactions += 1
                else:
                    self.replyReceived(self.handleTransactionData(reply))
            reply = reader.gets()

    def subscribe_again(self, channels) -> None:
        channels = list(channels)
        for i in range(0, len(channels), SUBSCRIBE_BATCH):
            self.subscribe(channels[i:i + SUBSCRIBE_BATCH]).addErrback(_ignore)

    def send_subscribe(self, channel: bytes) -> None:
        self.subscribe([channel]).addErrback(_ignore)

    def send_unsubscribe(self, channel: bytes) -> None:
        self.unsubscribe([channel]).addErrback(_ignore)


class Factory(txredisapi.RedisFactory):
    """One connection to Redis, made again with backoff (0.5 s doubling to
    10 s) by txredisapi's ``ClientService`` pool slot.

    ``current`` is the ready protocol or None; ``on_up(protocol)`` and
    ``on_down()`` are called as it comes and goes. txredisapi's own pool and
    connection queue are not used: nothing ever waits for a connection.
    """

    log = Logger()
    initialDelay = 0.5
    factor = 2.0
    maxDelay = 10.0

    def __init__(self, protocol, options: dict, on_up, on_down, name: str, channels: set | None = None):
        super().__init__(None, options["db"] or None, 1, charset=None, password=options["password"],
                         convertNumbers=False, username=options["username"])
        self.protocol = protocol
        self.name = name
        self.current = None
        self.on_up = on_up
        self.on_down = on_down
        self.on_message = None  # set by the bus: called with each pub/sub message
        self.channels = channels if channels is not None else set()

    def buildProtocol(self, addr):
        p = self.protocol(None, password=self.password, dbid=self.dbid, convertNumbers=False,
                          username=self.username)
        p.factory = self
        return p

    def ready(self, proto):
        if not proto.connected:
            return
        if isinstance(proto, SubscriberProtocol):
            proto.subscribe_again(self.channels)
        self.current = proto
        self.log.info("Redis {name} connection ready", name=self.name)
        self.on_up(proto)

    def lost(self, proto):
        if self.current is proto:
            self.current = None
            self.log.warn("Redis {name} connection lost", name=self.name)
            self.on_down()

    # txredisapi stops reconnecting for good when AUTH or SELECT is refused
    # (and reports it on a Deferred nobody holds here): keep trying instead,
    # with the slot's growing backoff, and say why in the log.
    def stopTrying(self):
        return None

    def connectionError(self, why):
        self.log.error("Redis refused the connection setup: {why}", why=str(why))

    def start(self, endpoint) -> None:
        self.startConnecting(endpoint)

    def stop(self):
        return self.disconnect()
