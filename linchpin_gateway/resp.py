"""A small Redis client: RESP2 framing, one command connection and one
pub/sub connection, each reconnecting with backoff.

Why not txredisapi: its lazy connections hold commands issued while Redis
is down until the connection is back (an unbounded queue), and a subscriber
that reconnects forgets its channels.  The gateway needs the opposite: a
command issued while Redis is down fails at once, a message that cannot be
sent is dropped, and the channels are subscribed again on every reconnect.
That takes little code on Twisted's ``ClientService``.

Everything is bytes: channel names, messages and replies.
"""

from __future__ import annotations

from collections import deque

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

MAX_BUFFERED = 8 * 1024 * 1024  # bytes written while Redis does not read before publishes are dropped
MAX_LINE = 64 * 1024


class RedisError(Exception):
    """An error reply from Redis."""


class NotConnected(Exception):
    """The command could not be sent: no connection to Redis right now."""


def command(*args) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class _Incomplete(Exception):
    pass


class Parser:
    """RESP2 replies out of a byte stream."""

    def __init__(self):
        self.buf = b""

    def feed(self, data: bytes) -> list:
        self.buf = self.buf + data if self.buf else data
        replies = []
        pos = 0
        buf = self.buf
        try:
            while pos < len(buf):
                reply, pos = self._parse(buf, pos)
                replies.append(reply)
        except _Incomplete:
            pass
        self.buf = buf[pos:]
        if len(self.buf) > MAX_LINE and b"\r\n" not in self.buf[:MAX_LINE] and self.buf[:1] not in b"$*":
            raise ValueError("RESP line too long")
        return replies

    def _parse(self, buf: bytes, pos: int):
        end = buf.find(b"\r\n", pos)
        if end < 0:
            raise _Incomplete
        kind = buf[pos:pos + 1]
        line = buf[pos + 1:end]
        pos = end + 2
        if kind == b"$":
            n = int(line)
            if n < 0:
                return None, pos
            if len(buf) < pos + n + 2:
                raise _Incomplete
            return buf[pos:pos + n], pos + n + 2
        if kind == b"*":
            n = int(line)
            if n < 0:
                return None, pos
            items = []
            for _ in range(n):
                item, pos = self._parse(buf, pos)
                items.append(item)
            return items, pos
        if kind == b":":
            return int(line), pos
        if kind == b"+":
            return line, pos
        if kind == b"-":
            return RedisError(line.decode("utf-8", "replace")), pos
        raise ValueError(f"bad RESP type {kind!r}")


@implementer(IPushProducer)
class _Backlog:
    """Told by the socket when its send buffer fills and drains."""

    def __init__(self, proto):
        self.proto = proto

    def pauseProducing(self):
        if not self.proto.paused:
            self.proto.paused = True
            self.proto.buffered = 0

    def resumeProducing(self):
        self.proto.paused = False
        self.proto.buffered = 0

    def stopProducing(self):
        pass


class RESPProtocol(protocol.Protocol):
    """A connection: AUTH and SELECT first, then commands answered in order."""

    log = Logger()

    def __init__(self, password: bytes | None, username: bytes | None, db: int):
        self.parser = Parser()
        self.waiting: deque = deque()  # Deferred, or None for replies nobody waits for
        self.password = password
        self.username = username
        self.db = db
        self.ready = defer.Deferred()
        self.paused = False
        self.buffered = 0

    def connectionMade(self):
        self.transport.registerProducer(_Backlog(self), True)
        setup = []
        if self.password is not None:
            setup.append(self.execute(b"AUTH", *([self.username] if self.username else []), self.password))
        if self.db:
            setup.append(self.execute(b"SELECT", self.db))
        d = defer.gatherResults(setup, consumeErrors=True) if setup else defer.succeed(None)
        d.addCallbacks(lambda _: self.ready.callback(self), self._setup_failed)

    def _setup_failed(self, failure):
        error = failure.value.subFailure.value if hasattr(failure.value, "subFailure") else failure.value
        self.log.error("Redis refused the connection setup: {error}", error=str(error))
        self.transport.loseConnection()

    def dataReceived(self, data):
        try:
            replies = self.parser.feed(data)
        except ValueError as e:
            self.log.error("malformed reply from Redis: {e}", e=str(e))
            self.transport.abortConnection()
            return
        for reply in replies:
            self.reply_received(reply)

    def reply_received(self, reply):
        if not self.waiting:
            return
        d = self.waiting.popleft()
        if d is None:
            return
        if isinstance(reply, RedisError):
            d.errback(reply)
        else:
            d.callback(reply)

    def execute(self, *args) -> defer.Deferred:
        d = defer.Deferred()
        self.waiting.append(d)
        self.transport.write(command(*args))
        return d

    def send_and_forget(self, *args) -> bool:
        """Write a command whose reply nobody needs; False (not sent) while
        Redis has not read ``MAX_BUFFERED`` bytes already written."""
        data = command(*args)
        if self.paused:
            self.buffered += len(data)
            if self.buffered > MAX_BUFFERED:
                return False
        self.waiting.append(None)
        self.transport.write(data)
        return True

    def connectionLost(self, reason):
        waiting, self.waiting = self.waiting, deque()
        for d in waiting:
            if d is not None:
                d.errback(NotConnected("connection to Redis lost"))


class SubscriberProtocol(RESPProtocol):
    """The pub/sub connection: pushes are messages, not replies."""

    def __init__(self, password, username, db, on_message):
        super().__init__(password, username, db)
        self.on_message = on_message
        self.subscribing = False

    def send_and_forget(self, *args) -> bool:
        # (UN)SUBSCRIBE is confirmed by pushes (one per channel), not by a
        # reply in turn: nothing to wait for.
        self.transport.write(command(*args))
        return True

    def reply_received(self, reply):
        if self.subscribing and type(reply) is list and reply:
            kind = reply[0]
            if kind == b"message":
                self.on_message(reply[1], reply[2])
                return
            if kind in (b"subscribe", b"unsubscribe"):
                return
        super().reply_received(reply)


class _Factory(protocol.Factory):
    noisy = False

    def __init__(self, make):
        self.make = make

    def buildProtocol(self, addr):
        p = self.make()
        p.factory = self
        return p


class Connection:
    """A reconnecting connection; ``current`` is the ready protocol or None.

    ``on_up(protocol)`` and ``on_down()`` are called as it comes and goes.
    """

    log = Logger()

    def __init__(self, reactor, endpoint, make_protocol, on_up, on_down, name: str):
        self.name = name
        self._make = make_protocol
        self.current = None
        self.on_up = on_up
        self.on_down = on_down
        self._service = ClientService(endpoint, _Factory(self._build), retryPolicy=backoffPolicy(0.5, 10.0, 2.0),
                                      clock=reactor)

    def _build(self):
        proto = self._make()
        proto.ready.addCallback(self._ready)
        original = proto.connectionLost

        def lost(reason):
            original(reason)
            if self.current is proto:
                self.current = None
                self.log.warn("Redis {name} connection lost", name=self.name)
                self.on_down()

        proto.connectionLost = lost
        return proto

    def _ready(self, proto):
        self.current = proto
        self.log.info("Redis {name} connection ready", name=self.name)
        self.on_up(proto)

    def start(self):
        self._service.startService()

    def stop(self) -> defer.Deferred:
        return self._service.stopService()
