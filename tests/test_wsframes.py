"""The lean RFC 6455 receive path (linchpin_common/wsframes.py) against plain
Autobahn: a server-side conformance set modelled on the Autobahn testsuite's
case groups 1 (framing), 2 (pings/pongs), 3 (reserved bits), 4 (opcodes),
5 (fragmentation), 6 (UTF-8), 7 (close handling) and 9 (limits).

Every case runs against an Autobahn server protocol with the gateway's
options as it is (``plain``) and the same protocol with the lean reader
(``lean``), each fed the case's bytes whole and in small pieces; all four
must give the expected outcome: the messages the application received, the
frames the server sent, and how the TCP connection ended.  The server fails
a broken stream by dropping the connection, as Autobahn does (its
``failByDrop``), which the testsuite accepts.
"""

from __future__ import annotations

import random

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from linchpin_common.contract import wire
from linchpin_gateway.config import MIN_MESSAGE_SIZE
from linchpin_gateway.websocket import websocket_options
from linchpin_common.wsframes import FAIL, MAX_FRAGMENTS, FrameReader, LeanReceive, unmask

CAP = wire.websocket_limit(MIN_MESSAGE_SIZE)  # frame and message cap, as the gateway sets them
MASK = b"\x37\xfa\x21\x3d"
HANDSHAKE = (b"GET /mqtt HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
             b"Sec-WebSocket-Protocol: mqtt\r\n\r\n")
OPEN, CLOSED, DROPPED = "open", "closed after the close handshake", "dropped"
TEXT, BINARY, CONT, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10


def frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, masked: bool = True,
          length: int | None = None, form: int | None = None) -> bytes:
    """A client frame; ``length``/``form`` (7, 16 or 64 bits) forge the header."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    if form is None:
        form = 7 if n < 126 else 16 if n < 65536 else 64
    bit = 0x80 if masked else 0
    if form == 7:
        head += bytes([bit | n])
    elif form == 16:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    return head + (MASK + unmask(payload, MASK) if masked else payload)


def close_frame(code: int | None = None, reason: bytes = b"") -> bytes:
    return frame(CLOSE, (code.to_bytes(2, "big") if code is not None else b"") + reason)


class Records:
    """Mixed into an Autobahn protocol: records the messages it is given;
    :meth:`lean` makes the same protocol with the lean reader."""

    def onOpen(self):
        self.received = []

    def onMessage(self, payload, isBinary):
        self.received.append((isBinary, bytes(payload)))

    @classmethod
    def lean(cls):
        def onOpen(self):
            cls.onOpen(self)
            self.start_lean_receive()

        return type(f"Lean{cls.__name__}", (LeanReceive, cls), {"onOpen": onOpen})


class Recorder(Records, WebSocketServerProtocol):
    """Plain Autobahn with the gateway's options: records what it is given."""

    def onConnect(self, request):
        return "mqtt"


LeanRecorder = Recorder.lean()


class Transport(StringTransport):
    ended = OPEN

    def unregisterProducer(self):
        self.producer = None  # a real transport allows it without a producer

    def loseConnection(self):
        super().loseConnection()
        self.ended = CLOSED if self.ended == OPEN else self.ended

    def abortConnection(self):
        super().abortConnection()
        self.ended = DROPPED


def server_frames(data: bytes) -> list:
    """(opcode, payload) of the unmasked frames a server wrote."""
    frames, pos = [], 0
    while pos < len(data):
        opcode, n = data[pos] & 0x0F, data[pos + 1] & 0x7F
        pos += 2
        if n == 126:
            n, pos = int.from_bytes(data[pos:pos + 2], "big"), pos + 2
        elif n == 127:
            n, pos = int.from_bytes(data[pos:pos + 8], "big"), pos + 8
        frames.append((opcode, data[pos:pos + n]))
        pos += n
    return frames


def connected(protocol_class, reactor=None):
    """A server protocol with the gateway's options on an in-memory socket,
    before the opening handshake: (protocol, transport)."""
    factory = WebSocketServerFactory("ws://gw.test/mqtt", protocols=["mqtt"], reactor=reactor or MemoryReactorClock())
    factory.setProtocolOptions(**websocket_options(MIN_MESSAGE_SIZE))
    factory.protocol = protocol_class
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 80))
    transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    return protocol, transport


def opened(protocol_class, reactor=None):
    """:func:`connected`, after the opening handshake, with nothing written yet."""
    protocol, transport = connected(protocol_class, reactor)
    protocol.dataReceived(HANDSHAKE)
    transport.clear()
    return protocol, transport


def run(protocol_class, data: bytes, piece: int | None, with_handshake: bool = False):
    protocol, transport = connected(protocol_class)
    if with_handshake:  # the frames arrive in the same read as the handshake
        protocol.dataReceived(HANDSHAKE + data[:piece or len(data)])
        data = data[piece or len(data):]
    else:
        protocol.dataReceived(HANDSHAKE)
    assert transport.value().startswith(b"HTTP/1.1 101")
    transport.clear()
    step = piece or len(data) or 1
    for i in range(0, len(data), step):
        protocol.dataReceived(data[i:i + step])
    return protocol.received, server_frames(transport.value()), transport.ended


def check(data: bytes, messages: list, frames: list, ended: str) -> None:
    """Both paths, whole and in pieces, give ``messages``, ``frames``, ``ended``."""
    expected = (messages, frames, ended)
    pieces = [None, 1, 7] if len(data) < 2048 else [None, 4093, 65537]
    for name, cls in (("plain", Recorder), ("lean", LeanRecorder)):
        for piece in pieces:
            got = run(cls, data, piece)
            assert got == expected, f"{name} path, fed in pieces of {piece or 'all'} bytes"
    assert run(LeanRecorder, data, 5, with_handshake=True) == expected
    assert run(Recorder, data, 5, with_handshake=True) == expected


def b(payload: bytes):
    return (True, payload)


def t(payload: bytes):
    return (False, payload)


NORMAL_CLOSE = [(CLOSE, (1000).to_bytes(2, "big"))]
PAYLOAD = random.Random(13).randbytes(70000)


# -- 1: framing ------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 128, 65535, 65536])
def test_1_binary_message_of_every_length_form(n):
    check(frame(BINARY, PAYLOAD[:n]), [b(PAYLOAD[:n])], [], OPEN)


@pytest.mark.parametrize("n", [0, 125, 126, 65536])
def test_1_text_message(n):
    text = (b"hello " * 20000)[:n]
    check(frame(TEXT, text), [t(text)], [], OPEN)


def test_1_many_messages_in_one_read():
    data = b"".join(frame(BINARY, PAYLOAD[:i]) for i in range(0, 300, 7))
    check(data, [b(PAYLOAD[:i]) for i in range(0, 300, 7)], [], OPEN)


def test_1_unmasked_client_frame_is_refused():
    check(frame(BINARY, b"x", masked=False) + frame(BINARY, b"y"), [], [], DROPPED)


@pytest.mark.parametrize("n,form", [(125, 16), (0, 16), (65535, 64), (200, 64)])
def test_1_length_not_in_its_shortest_form_is_refused(n, form):
    check(frame(BINARY, b"ok") + frame(BINARY, PAYLOAD[:n], form=form), [b(b"ok")], [], DROPPED)


def test_1_length_above_2_63_is_refused():
    check(frame(BINARY, b"", length=1 << 63, form=64), [], [], DROPPED)


# -- 2: pings and pongs -----------------------------------------------------

@pytest.mark.parametrize("payload", [b"", b"Hello, world!", bytes(range(125)), b"\x00\xff\xfe\xfd\xfc"])
def test_2_ping_is_answered_with_its_payload(payload):
    check(frame(PING, payload), [], [(PONG, payload)], OPEN)


def test_2_ping_above_125_bytes_is_refused():
    check(frame(PING, b"x" * 126), [], [], DROPPED)


def test_2_unsolicited_pong_is_ignored():
    check(frame(PONG, b"unsolicited") + frame(BINARY, b"after"), [b(b"after")], [], OPEN)


def test_2_ten_pings_get_ten_pongs_in_order():
    data = b"".join(frame(PING, b"ping %d" % i) for i in range(10))
    check(data, [], [(PONG, b"ping %d" % i) for i in range(10)], OPEN)


# -- 3: reserved bits -------------------------------------------------------

@pytest.mark.parametrize("rsv", range(1, 8))
@pytest.mark.parametrize("opcode", [TEXT, BINARY, PING, CLOSE])
def test_3_reserved_bits_are_refused(rsv, opcode):
    data = frame(BINARY, b"before") + frame(opcode, b"", rsv=rsv) + frame(PING, b"after")
    check(data, [b(b"before")], [], DROPPED)


# -- 4: opcodes ---------------------------------------------------------------

@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
def test_4_reserved_opcodes_are_refused(opcode):
    data = frame(BINARY, b"before") + frame(opcode, b"payload") + frame(PING, b"after")
    check(data, [b(b"before")], [], DROPPED)


# -- 5: fragmentation -------------------------------------------------------

def test_5_fragmented_ping_is_refused():
    check(frame(PING, b"frag", fin=False) + frame(CONT, b"ment"), [], [], DROPPED)


def test_5_fragmented_close_is_refused():
    check(frame(CLOSE, b"\x03\xe8", fin=False), [], [], DROPPED)


@pytest.mark.parametrize("opcode,wrap", [(TEXT, t), (BINARY, b)])
def test_5_message_in_fragments(opcode, wrap):
    data = frame(opcode, b"frag", fin=False) + frame(CONT, b"men", fin=False) + frame(CONT, b"t")
    check(data, [wrap(b"fragment")], [], OPEN)


def test_5_one_byte_fragments_and_empty_ones():
    parts = [frame(BINARY, b"", fin=False)] + [frame(CONT, bytes([c]), fin=False) for c in b"abcdef"]
    check(b"".join(parts) + frame(CONT, b""), [b(b"abcdef")], [], OPEN)


def test_5_pings_between_fragments_are_answered_first():
    data = (frame(BINARY, b"one ", fin=False) + frame(PING, b"p1") + frame(CONT, b"two ", fin=False)
            + frame(PONG, b"ignored") + frame(PING, b"p2") + frame(CONT, b"three"))
    check(data, [b(b"one two three")], [(PONG, b"p1"), (PONG, b"p2")], OPEN)


@pytest.mark.parametrize("fin", [True, False])
def test_5_continuation_outside_a_message_is_refused(fin):
    check(frame(CONT, b"stray", fin=fin) + frame(BINARY, b"after"), [], [], DROPPED)


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_5_new_message_inside_a_fragmented_one_is_refused(opcode):
    data = frame(BINARY, b"start", fin=False) + frame(opcode, b"new") + frame(CONT, b"end")
    check(data, [], [], DROPPED)


def test_5_message_after_a_finished_fragmented_one():
    data = frame(BINARY, b"a", fin=False) + frame(CONT, b"b") + frame(BINARY, b"c")
    check(data, [b(b"ab"), b(b"c")], [], OPEN)


def test_5_close_between_fragments_ends_the_message_undelivered():
    data = frame(BINARY, b"half", fin=False) + close_frame(1000) + frame(CONT, b"rest")
    check(data, [], NORMAL_CLOSE, CLOSED)


# -- 6: UTF-8 -----------------------------------------------------------------

@pytest.mark.parametrize("text", [b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", b"\xed\xa0\x80", b"\xff", b"\xc0\xaf"])
def test_6_text_is_delivered_unvalidated_as_configured(text):
    # The gateway turns UTF-8 validation off (MQTT travels in binary
    # messages; its session closes on any text message), so both paths hand
    # text over as received, valid or not, also split across fragments.
    check(frame(TEXT, text[:1], fin=False) + frame(CONT, text[1:]), [t(text)], [], OPEN)


# -- 7: close handling ----------------------------------------------------

def test_7_close_without_payload_is_answered_and_the_connection_closed():
    check(close_frame(), [], NORMAL_CLOSE, CLOSED)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999])
def test_7_close_with_a_valid_code(code):
    check(close_frame(code, b"bye \xe2\x82\xac"), [], NORMAL_CLOSE, CLOSED)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999, 5000, 65535])
def test_7_close_with_an_invalid_code_is_refused(code):
    check(close_frame(code), [], [], DROPPED)


def test_7_close_with_one_byte_payload_is_refused():
    check(frame(CLOSE, b"\x03"), [], [], DROPPED)


def test_7_close_reason_not_utf8_is_refused():
    check(close_frame(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"), [], [], DROPPED)


def test_7_close_reason_of_123_bytes():
    check(close_frame(1000, b"*" * 123), [], NORMAL_CLOSE, CLOSED)


def test_7_nothing_after_a_close_is_delivered_or_answered():
    data = frame(BINARY, b"before") + close_frame(1000) + frame(BINARY, b"after") + frame(PING, b"p")
    check(data, [b(b"before")], NORMAL_CLOSE, CLOSED)


def test_7_close_after_the_server_closed_completes_the_handshake():
    for cls in (Recorder, LeanRecorder):
        protocol, transport = opened(cls)
        protocol.sendClose(code=1000)
        assert server_frames(transport.value()) == NORMAL_CLOSE
        protocol.dataReceived(frame(BINARY, b"in flight") + close_frame(1000))
        assert protocol.received == [b(b"in flight")]  # as Autobahn: still delivered while closing
        assert transport.ended == DROPPED and protocol.wasClean, cls.__name__


# -- 9: limits --------------------------------------------------------------

BIG = random.Random(9).randbytes(CAP + 1)


def test_9_message_at_the_cap_in_one_frame():
    check(frame(BINARY, BIG[:CAP]), [b(BIG[:CAP])], [], OPEN)


def test_9_message_at_the_cap_in_64_kib_fragments():
    parts = [BIG[:CAP][i:i + 65536] for i in range(0, CAP, 65536)]
    data = b"".join(frame(BINARY if i == 0 else CONT, p, fin=(i == len(parts) - 1)) for i, p in enumerate(parts))
    check(data, [b(BIG[:CAP])], [], OPEN)


def test_9_frame_above_the_cap_is_refused_from_its_header():
    header = frame(BINARY, b"", length=CAP + 1, form=64)[:14]  # no payload follows: it is never awaited
    check(frame(BINARY, b"ok") + header, [b(b"ok")], [], DROPPED)


def test_9_message_above_the_cap_in_fragments_is_refused():
    data = frame(BINARY, BIG[:CAP], fin=False) + frame(CONT, b"x")
    check(data, [], [], DROPPED)


def test_autobahn_send_queue_still_works_after_the_lean_path_started():
    # The lean path swaps Autobahn's send deque for a small list: what
    # Autobahn queues (sync sends, chopped frames) still goes out in order.
    for cls in (Recorder, LeanRecorder):
        reactor = MemoryReactorClock()
        protocol, transport = opened(cls, reactor)
        protocol.sendMessage(b"abcdef", isBinary=True, sync=True)
        protocol.sendMessage(b"ghi", isBinary=True)
        for _ in range(4):
            reactor.advance(0)
        assert server_frames(transport.value()) == [(BINARY, b"abcdef"), (BINARY, b"ghi")], cls.__name__
        assert not protocol.send_queue


# -- the reader alone --------------------------------------------------------

def test_reader_buffers_no_more_than_a_frame_and_joins_once():
    reader = FrameReader(CAP, CAP)
    data = frame(BINARY, BIG[:200000])
    pieces = [data[i:i + 1000] for i in range(0, len(data), 1000)]
    for n, piece in enumerate(pieces[:-1], 1):
        assert reader.feed(piece) == []
        assert len(reader._chunks) == n and reader._buffered == 1000 * n  # kept as they came, not re-joined
    next_frame = frame(BINARY, b"next")
    assert reader.feed(pieces[-1] + next_frame[:5]) == [(BINARY, BIG[:200000])]
    assert reader._buffered == 5 and reader._parts == []  # only the start of the next frame is kept
    assert reader.feed(next_frame[5:]) == [(BINARY, b"next")] and not reader._chunks
    assert reader.feed(frame(BINARY, b"", rsv=1)) == [(FAIL, 1002, "RSV = 1 and no extension negotiated")]
    assert reader.feed(frame(BINARY, b"x")) == []  # failed for good


def test_unmask_small_and_large():
    for n in (0, 1, 3, 4, 5, 1000, 1025, 5001, 70000):  # the integer XOR, then Autobahn's masker
        key = (MASK * (n // 4 + 1))[:n]
        assert unmask(PAYLOAD[:n], MASK) == bytes(x ^ y for x, y in zip(PAYLOAD[:n], key))
    assert unmask(b"\x00\x00\x00\x00\x00", b"\x01\x02\x03\x04") == b"\x01\x02\x03\x04\x01"


# -- fragments: what a message in progress may hold ----------------------------

def test_empty_continuation_frames_are_bounded_and_hold_nothing():
    """Before: each empty continuation frame (6 bytes on the wire) kept a
    list entry and counted nothing against the message cap, so a client
    could grow the gateway's memory without bound inside one message."""
    reader = FrameReader(CAP, CAP)
    empty = frame(CONT, b"", fin=False)
    assert reader.feed(frame(BINARY, b"start", fin=False) + empty * (MAX_FRAGMENTS - 1)) == []
    assert reader._parts == [b"start"]  # the empty ones are kept as nothing
    assert reader.feed(empty * 100000) == [(FAIL, 1009, f"received WebSocket message in more than "
                                                        f"{MAX_FRAGMENTS} fragments")]
    assert reader._parts == [] and reader.failed


def test_one_byte_fragments_are_bounded_too():
    reader = FrameReader(CAP, CAP)
    data = frame(BINARY, b"a", fin=False) + frame(CONT, b"b", fin=False) * (MAX_FRAGMENTS + 5)
    events = reader.feed(data)
    assert events[-1][:2] == (FAIL, 1009) and len(reader._parts) == 0


def test_a_message_in_the_most_fragments_allowed_is_whole():
    payload = bytes(range(256)) * 4
    data = frame(BINARY, payload[:1], fin=False) + b"".join(
        frame(CONT, payload[i:i + 1], fin=(i == MAX_FRAGMENTS - 1)) for i in range(1, MAX_FRAGMENTS))
    assert FrameReader(CAP, CAP).feed(data) == [(BINARY, payload[:MAX_FRAGMENTS])]
    reader = FrameReader(CAP, CAP)  # the count starts again with each message
    assert reader.feed(data + data) == [(BINARY, payload[:MAX_FRAGMENTS])] * 2


def test_an_empty_fragment_flood_closes_the_connection_as_too_big():
    protocol, transport = opened(LeanRecorder)
    protocol.dataReceived(frame(BINARY, b"x", fin=False) + frame(CONT, b"", fin=False) * (MAX_FRAGMENTS + 1))
    assert protocol.received == [] and transport.ended == DROPPED
    assert protocol._frames._parts == []


def test_the_message_cap_may_be_raised_between_reads():
    reader = FrameReader(CAP, 100)
    assert reader.feed(frame(BINARY, b"a" * 100)) == [(BINARY, b"a" * 100)]
    reader.max_message = CAP
    assert reader.feed(frame(BINARY, b"b" * 1000)) == [(BINARY, b"b" * 1000)]
    reader.max_message = 100
    assert reader.feed(frame(BINARY, b"c" * 101))[0][:2] == (FAIL, 1009)
