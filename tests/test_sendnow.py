"""linchpin_common/sendnow.py: a message to an idle TCP socket goes out at
once, without the reactor's write turn; with anything buffered, on TLS, on
a closing connection or when the socket takes only part, Twisted's own
buffering keeps the bytes in order."""

from __future__ import annotations

import socket

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport

from linchpin_common.sendnow import write_now


@pytest.fixture
def connection():
    """A real TCP-like connection (a Twisted tcp.Server over one end of a
    socket pair, on a memory reactor) and the peer's socket."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(5)
    reactor = MemoryReactor()
    transport = tcp.Server(ours, Protocol(), ("127.0.0.1", 40000), None, 1, reactor)
    yield transport, peer, reactor
    ours.close()
    peer.close()


def received(peer: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = peer.recv(n - len(data))
        assert chunk
        data += chunk
    return data


def test_an_idle_socket_gets_the_message_at_once(connection):
    transport, peer, reactor = connection
    write_now(transport, b"\x82\x05", b"hello")
    assert received(peer, 7) == b"\x82\x05hello"
    assert transport not in reactor.getWriters()  # no trip through the reactor's writers
    assert not transport._tempDataBuffer and not transport.dataBuffer


def test_behind_buffered_bytes_the_message_waits_its_turn(connection):
    transport, peer, reactor = connection
    transport.write(b"first")
    write_now(transport, b"\x82\x06", b"second")
    assert transport in reactor.getWriters()
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)  # nothing jumped the queue
    peer.settimeout(5)
    transport.doWrite()
    assert received(peer, 13) == b"first\x82\x06second"


def test_what_the_socket_does_not_take_is_buffered_in_order(connection):
    transport, peer, reactor = connection
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes at once
    write_now(transport, b"HEAD", big)
    assert transport in reactor.getWriters() and transport._tempDataLen > 0
    got = b""
    for _ in range(100_000):  # bounded: a write path that stops sending fails here, not hangs
        if len(got) >= 4 + len(big):
            break
        transport.doWrite()
        peer.setblocking(False)
        try:
            got += peer.recv(1 << 20)
        except BlockingIOError:
            pass
    assert got == b"HEAD" + big


def test_a_closing_connection_and_other_transports_keep_twisteds_path(connection):
    transport, peer, reactor = connection
    transport.loseConnection()  # disconnecting: whatever is written goes after the buffer
    write_now(transport, b"\x82\x01", b"x")
    assert transport._tempDataBuffer == [b"\x82\x01", b"x"]
    other = StringTransport()
    write_now(other, b"\x82\x01", b"y")
    assert other.value() == b"\x82\x01y"


def test_a_peer_that_is_gone_is_left_for_twisted_to_report(connection):
    transport, peer, reactor = connection
    peer.close()
    write_now(transport, b"\x82\x01", b"z")  # no exception here
    for _ in range(3):  # the first send may still succeed into the kernel
        write_now(transport, b"\x82\x01", b"z")
    assert transport._tempDataBuffer or transport.dataBuffer  # Twisted's doWrite meets the error
    assert isinstance(transport.doWrite(), Exception)
