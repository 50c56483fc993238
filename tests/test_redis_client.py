"""The bus's Redis client in memory: txredisapi under our adapter
(linchpin_gateway/redis_client.py), on StringTransports.

What txredisapi alone would not do, and the adapter must: fail at once
while Redis is down instead of queueing, subscribe again on every
reconnection, and stop writing publishes once 8 MiB wait unread. The same
client against a real redis-server is in tests/test_scaleout.py.
"""

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from linchpin_gateway import redis_client
from linchpin_gateway.bus import NotConnected, RedisBus, parse_url
from linchpin_gateway.config import redact_url

OK = b"+OK\r\n"


def commands(data: bytes) -> list[list[bytes]]:
    """The commands written, each as its list of arguments."""
    out, pos = [], 0
    while pos < len(data):
        end = data.index(b"\r\n", pos)
        assert data[pos:pos + 1] == b"*"
        count, pos = int(data[pos + 1:end]), end + 2
        args = []
        for _ in range(count):
            end = data.index(b"\r\n", pos)
            size = int(data[pos + 1:end])
            args.append(data[end + 2:end + 2 + size])
            pos = end + 2 + size + 2
        out.append(args)
    return out


class Link:
    """One connection of the bus's client, as a factory would make it."""

    def __init__(self, factory, clock):
        self.clock = clock
        self.proto = factory.buildProtocol(None)
        self.proto.callLater = clock.callLater  # (txredisapi's pure-Python reader, without hiredis, resumes on it)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def feed(self, data: bytes) -> None:
        self.proto.dataReceived(data)
        self.clock.advance(0)

    def take(self) -> list[list[bytes]]:
        written = commands(self.transport.value())
        self.transport.clear()
        return written

    def lose(self) -> None:
        self.proto.connectionLost(Failure(ConnectionError("gone")))


@pytest.fixture
def bus():
    bus = RedisBus(MemoryReactorClock(), "redis://:s3cret@127.0.0.1:6379/2")
    bus.clock = Clock()
    bus.messages, bus.states = [], []
    bus.start(lambda channel, data: bus.messages.append((channel, data)), bus.states.append)
    yield bus
    bus.stop()


def up(link: Link, reply_on: bytes = OK) -> None:
    """AUTH and SELECT answered (and on the command connection, CLIENT REPLY
    ON with ``reply_on``): the connection is ready."""
    assert link.take() == [[b"AUTH", b"s3cret"]]
    link.feed(OK)
    assert link.take() == [[b"SELECT", b"2"]]
    link.feed(OK)
    if isinstance(link.proto, redis_client.CommandProtocol):
        assert link.take() == [[b"CLIENT", b"REPLY", b"ON"]]
        link.feed(reply_on)


def connect(bus, reply_on: bytes = OK) -> tuple[Link, Link]:
    cmd, sub = Link(bus._cmd, bus.clock), Link(bus._sub, bus.clock)
    up(cmd, reply_on)
    up(sub)
    return cmd, sub


def failed_at_once(d) -> Exception:
    got = []
    d.addErrback(got.append)
    assert got, "the call waits instead of failing"
    return got[0].value


def test_while_redis_is_down_nothing_waits(bus):
    """No connection yet, a connection still in AUTH, a connection lost: a
    publish is dropped and every other call fails at once, and nothing is
    written later when a connection comes."""
    assert bus.publish(b"lm:p:x", b"m") is False
    assert isinstance(failed_at_once(bus.hgetall(b"k")), NotConnected)
    assert isinstance(failed_at_once(bus.claim(b"o", b"e", b"A", 1000)), NotConnected)
    cmd = Link(bus._cmd, bus.clock)
    assert bus.publish(b"lm:p:x", b"m") is False  # still authenticating
    assert isinstance(failed_at_once(bus.ping()), NotConnected)
    up(cmd)
    sub = Link(bus._sub, bus.clock)
    up(sub)
    assert bus.connected and bus.states == [True]
    assert cmd.take() == []  # nothing held back from before
    pending = bus.hgetall(b"k")
    assert cmd.take() == [[b"HGETALL", b"k"]]
    cmd.lose()
    assert isinstance(failed_at_once(pending), redis_client.txredisapi.ConnectionError)
    assert not bus.connected and bus.states == [True, False]
    assert bus.publish(b"lm:p:x", b"m") is False
    assert isinstance(failed_at_once(bus.exists([b"k"])), NotConnected)
    assert cmd.transport.value() == b""


def test_replies_are_bytes_and_publishes_go_out_without_waiting_or_a_reply(bus):
    cmd, _ = connect(bus)
    assert bus.publish(b"lm:p:x", b"\x00\r\n") is True
    assert bus.publish(b"lm:p:x", b"42") is True
    got = []
    bus.claim(b"lm:own:d", b"lm:ep:d", b"B", 30000).addCallback(got.append)
    bus.hgetall(b"lm:conns:i").addCallback(got.append)
    bus.exists([b"a", b"b"]).addCallback(got.append)
    written = cmd.take()
    assert written[:4] == [[b"CLIENT", b"REPLY", b"SKIP"], [b"PUBLISH", b"lm:p:x", b"\x00\r\n"],
                           [b"CLIENT", b"REPLY", b"SKIP"], [b"PUBLISH", b"lm:p:x", b"42"]]
    assert [c[0] for c in written[4:]] == [b"EVAL", b"HGETALL", b"MGET"]
    # Redis answers only the last three: no reply is taken for a publish.
    cmd.feed(b"*2\r\n:7\r\n$0\r\n\r\n*2\r\n$1\r\nc\r\n$6\r\nA r 12\r\n*2\r\n$-1\r\n$1\r\n1\r\n")
    assert got == [(7, None), {b"c": b"A r 12"}, [False, True]]
    assert not cmd.proto.replyQueue.waiting and not cmd.proto.replyQueue.pending


def test_where_redis_refuses_client_reply_each_publish_keeps_its_reply(bus):
    cmd, _ = connect(bus, reply_on=b"-NOPERM this user has no permissions to run the 'client|reply' command\r\n")
    assert bus.connected
    assert bus.publish(b"lm:p:x", b"a") is True
    got = []
    bus.hgetall(b"k").addCallback(got.append)
    assert cmd.take() == [[b"PUBLISH", b"lm:p:x", b"a"], [b"HGETALL", b"k"]]
    cmd.feed(b":1\r\n*0\r\n")
    assert got == [{}]
    assert not cmd.proto.replyQueue.waiting and not cmd.proto.replyQueue.pending


def test_a_connection_lost_before_it_is_ready_is_not_announced(bus):
    cmd = Link(bus._cmd, bus.clock)
    cmd.feed(OK)  # AUTH
    cmd.feed(OK)  # SELECT
    assert cmd.take()[-1] == [b"CLIENT", b"REPLY", b"ON"]
    cmd.lose()  # before the answer
    up(Link(bus._sub, bus.clock))
    assert bus._cmd.current is None and not bus.connected and bus.states == []


def test_the_subscriber_subscribes_again_on_every_reconnection(bus):
    bus.subscribe(b"lm:p:a")  # before any connection
    cmd, sub = connect(bus)
    assert sub.take() == [[b"SUBSCRIBE", b"lm:p:a"]]
    bus.subscribe(b"lm:p:b")
    assert sub.take() == [[b"SUBSCRIBE", b"lm:p:b"]]
    sub.feed(b"*3\r\n$9\r\nsubscribe\r\n$6\r\nlm:p:a\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$6\r\nlm:p:b\r\n:2\r\n")
    sub.lose()
    assert not bus.connected
    bus.subscribe(b"lm:p:c")  # while down
    bus.unsubscribe(b"lm:p:a")
    assert sub.transport.value() == b""
    again = Link(bus._sub, bus.clock)
    up(again)
    (subscribe,) = again.take()
    assert subscribe[0] == b"SUBSCRIBE" and sorted(subscribe[1:]) == [b"lm:p:b", b"lm:p:c"]
    assert bus.connected and bus.states == [True, False, True]
    again.feed(b"*3\r\n$7\r\nmessage\r\n$6\r\nlm:p:c\r\n$3\r\n\x00\r\n\r\n")
    assert bus.messages == [(b"lm:p:c", b"\x00\r\n")]


def test_messages_in_one_read_arrive_in_order_whole_and_split(bus):
    _, sub = connect(bus)
    bus.subscribe(b"lm:p:a")
    sub.take()
    stream = (b"*3\r\n$9\r\nsubscribe\r\n$6\r\nlm:p:a\r\n:1\r\n"
              + b"".join(b"*3\r\n$7\r\nmessage\r\n$6\r\nlm:p:a\r\n$%d\r\n%s\r\n" % (len(m), m)
                         for m in (b"one", b"", b"\r\n*3\r\n", b"x" * 300)))
    sub.feed(stream[:50])
    sub.feed(stream[50:51])
    sub.feed(stream[51:])
    assert bus.messages == [(b"lm:p:a", m) for m in (b"one", b"", b"\r\n*3\r\n", b"x" * 300)]
    assert not sub.proto.replyQueue.waiting and not sub.proto.replyQueue.pending


def test_many_channels_in_batches_and_no_reply_slot_left_behind(bus):
    channels = [b"lm:p:%04d" % n for n in range(2500)]
    for channel in channels:
        bus.subscribe(channel)
    _, sub = connect(bus)
    written = sub.take()
    assert [len(c) - 1 for c in written] == [1000, 1000, 500]
    assert sorted(ch for c in written for ch in c[1:]) == channels
    sub.feed(b"".join(b"*3\r\n$9\r\nsubscribe\r\n$9\r\n%s\r\n:%d\r\n" % (ch, n + 1) for n, ch in enumerate(channels)))
    assert not sub.proto.replyQueue.waiting and not sub.proto.replyQueue.pending
    sub.feed(b"*3\r\n$7\r\nmessage\r\n$9\r\nlm:p:0001\r\n$2\r\nhi\r\n")
    assert bus.messages == [(b"lm:p:0001", b"hi")]


def test_publishes_stop_once_8_mib_wait_unread_and_resume_when_it_drains(bus):
    cmd, _ = connect(bus)
    message = b"x" * (1024 * 1024)
    cmd.transport.producer.pauseProducing()  # the socket's send buffer is full
    sent = 0
    while bus.publish(b"lm:p:x", message):
        sent += 1
        assert sent <= 8
    assert sent == 7  # 7 MiB and their framing fit, an eighth would pass 8 MiB
    assert len(cmd.transport.value()) <= redis_client.MAX_BUFFERED
    assert bus.publish(b"lm:p:x", b"small") is True  # what still fits goes
    cmd.transport.clear()
    cmd.transport.producer.resumeProducing()  # Redis read it all
    assert bus.publish(b"lm:p:x", message) is True
    assert len(cmd.transport.value()) > len(message)


def test_a_refused_login_is_logged_and_retried_not_given_up(bus):
    cmd = Link(bus._cmd, bus.clock)
    assert cmd.take() == [[b"AUTH", b"s3cret"]]
    cmd.feed(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
    assert cmd.transport.disconnecting and not bus.connected
    assert not bus._cmd.stopped and all(slot.reconnect for slot in bus._cmd.slots)


def test_bus_urls():
    o = parse_url("rediss://user:p%40ss@redis.example:6380/3")
    assert o == {"tls": True, "host": "redis.example", "port": 6380, "db": 3, "username": b"user",
                 "password": b"p@ss"}
    assert parse_url("redis://127.0.0.1")["port"] == 6379
    assert redact_url("rediss://user:p%40ss@redis.example:6380/3") == "rediss://redis.example:6380/3"
    assert redact_url("postgresql://u@[::1]:5432/db?password=p%40ss") == "postgresql://[::1]:5432/db"
    for bad in ("http://x", "redis://", "redis://h/x"):
        with pytest.raises(ValueError):
            parse_url(bad)
