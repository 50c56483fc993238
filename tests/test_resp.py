"""The Redis client's framing, sans I/O."""

import pytest

from linchpin_gateway.bus import parse_url, redact
from linchpin_gateway.resp import Parser, RedisError, command


def test_command_is_an_array_of_bulk_strings():
    assert command(b"PUBLISH", "ch", 5, b"\r\n\x00") == b"*4\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$1\r\n5\r\n$3\r\n\r\n\x00\r\n"


def test_parser_any_split_gives_the_same_replies():
    stream = (b"+OK\r\n:42\r\n$-1\r\n-ERR wrong\r\n*3\r\n$7\r\nmessage\r\n$4\r\nlm:x\r\n$5\r\na\r\nbc\r\n"
              b"*2\r\n:1\r\n*0\r\n")
    for cut in range(1, len(stream)):
        p = Parser()
        replies = p.feed(stream[:cut]) + p.feed(stream[cut:])
        assert replies[:3] == [b"OK", 42, None]
        assert isinstance(replies[3], RedisError) and str(replies[3]) == "ERR wrong"
        assert replies[4:] == [[b"message", b"lm:x", b"a\r\nbc"], [1, []]]
        assert p.buf == b""


def test_parser_refuses_garbage():
    with pytest.raises(ValueError):
        Parser().feed(b"?what\r\n")


def test_bus_urls():
    o = parse_url("rediss://user:p%40ss@redis.example:6380/3")
    assert o == {"tls": True, "host": "redis.example", "port": 6380, "db": 3, "username": b"user",
                 "password": b"p@ss"}
    assert parse_url("redis://127.0.0.1")["port"] == 6379
    assert "p%40ss" not in redact("rediss://user:p%40ss@redis.example:6380/3")
    for bad in ("http://x", "redis://", "redis://h/x"):
        with pytest.raises(ValueError):
            parse_url(bad)


def test_subscriber_pushes_are_messages_and_nothing_waits_for_subscribe_confirmations():
    from twisted.internet.testing import StringTransport

    from linchpin_gateway.resp import SubscriberProtocol

    got = []
    proto = SubscriberProtocol(None, None, 0, lambda channel, data: got.append((channel, data)))
    proto.makeConnection(StringTransport())
    proto.subscribing = True
    for n in range(100):
        proto.send_and_forget(b"SUBSCRIBE", b"lm:p:%02d" % n)
        proto.dataReceived(b"*3\r\n$9\r\nsubscribe\r\n$7\r\nlm:p:%02d\r\n:%d\r\n" % (n, n + 1))
    proto.dataReceived(b"*3\r\n$7\r\nmessage\r\n$7\r\nlm:p:01\r\n$3\r\n\x00\r\n\r\n")
    assert got == [(b"lm:p:01", b"\x00\r\n")]
    assert len(proto.waiting) == 0
