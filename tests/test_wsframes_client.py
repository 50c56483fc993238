"""The lean RFC 6455 receive path on the client side (the connector and the
device read the gateway's frames with linchpin_common/wsframes.py) against
plain Autobahn, with the client's options: the Autobahn testsuite's case
groups 1 (framing), 2 (pings/pongs), 3 (reserved bits), 4 (opcodes),
5 (fragmentation), 7 (close) and 9 (limits), as a server sends them.

Each case runs against an Autobahn client protocol as it is and the same
protocol with the lean reader, fed whole and in pieces, also in the same
read as the handshake's answer: all must give the same messages, the same
frames back (unmasked here) and the same end of the connection.
"""

from __future__ import annotations

import base64
import hashlib
import random
import re

import pytest
from autobahn.twisted.websocket import WebSocketClientProtocol
from twisted.internet.testing import MemoryReactorClock

from linchpin_common import mqtt_client
from linchpin_common.contract import wire
from linchpin_common.rawws import mask
from tests.test_wsframes import BINARY, CLOSE, CONT, PING, PONG, TEXT, Records, Transport, frame

CAP = wire.websocket_limit(wire.DEFAULT_MAX_REMAINING_LENGTH)  # as client_factory sets it
PAYLOAD = random.Random(21).randbytes(CAP + 1)


def server(opcode: int, payload: bytes = b"", **kw) -> bytes:
    return frame(opcode, payload, masked=False, **kw)


class Recorder(Records, WebSocketClientProtocol):
    pass


LeanRecorder = Recorder.lean()


def client_frames(data: bytes) -> list:
    """(opcode, payload) of the masked frames a client wrote, unmasked."""
    frames, pos = [], 0
    while pos < len(data):
        opcode, n = data[pos] & 0x0F, data[pos + 1] & 0x7F
        assert data[pos + 1] & 0x80, "a client frame must be masked"
        pos += 2
        if n == 126:
            n, pos = int.from_bytes(data[pos:pos + 2], "big"), pos + 2
        elif n == 127:
            n, pos = int.from_bytes(data[pos:pos + 8], "big"), pos + 8
        key, pos = data[pos:pos + 4], pos + 4
        frames.append((opcode, mask(data[pos:pos + n], key)))
        pos += n
    return frames


def run(protocol_class, data: bytes, piece: int | None, with_handshake: bool = False):
    factory = mqtt_client.client_factory(MemoryReactorClock(), "ws://gw.test/mqtt", "u", "p", on_message=None)
    factory.protocol = protocol_class
    protocol = factory.buildProtocol(None)
    transport = Transport()
    protocol.makeConnection(transport)
    key = re.search(rb"Sec-WebSocket-Key: (\S+)", transport.value()).group(1)
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    answer = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")
    transport.clear()
    if with_handshake:
        protocol.dataReceived(answer + data[:piece or len(data)])
        data = data[piece or len(data):]
    else:
        protocol.dataReceived(answer)
    assert protocol.state == protocol.STATE_OPEN or transport.ended != "open"
    step = piece or len(data) or 1
    for i in range(0, len(data), step):
        protocol.dataReceived(data[i:i + step])
    return protocol.received, client_frames(transport.value()), transport.ended


def check(data: bytes, messages: list | None = None) -> None:
    """Both paths agree, whole, in pieces and with the handshake; and give
    ``messages`` where the case says which."""
    expected = run(Recorder, data, None)
    if messages is not None:
        assert expected[0] == messages
    pieces = [None, 1, 7] if len(data) < 2048 else [None, 4093, 65537]
    for cls in (Recorder, LeanRecorder):
        for piece in pieces:
            assert run(cls, data, piece) == expected, f"{cls.__name__}, fed in pieces of {piece or 'all'} bytes"
        assert run(cls, data, 5, with_handshake=True) == expected, f"{cls.__name__}, with the handshake"
    return expected


def b(payload):
    return (True, payload)


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 262184])
def test_1_binary_message_of_every_length_form(n):
    check(server(BINARY, PAYLOAD[:n]), [b(PAYLOAD[:n])])


def test_1_many_messages_in_one_read():
    check(b"".join(server(BINARY, PAYLOAD[:i]) for i in range(0, 300, 7)), [b(PAYLOAD[:i]) for i in range(0, 300, 7)])


def test_1_masked_server_frame_is_refused():
    received, _, ended = check(server(BINARY, b"ok") + frame(BINARY, b"x") + server(BINARY, b"y"))
    assert received == [b(b"ok")] and ended == "dropped"


@pytest.mark.parametrize("n,form", [(125, 16), (65535, 64)])
def test_1_length_not_in_its_shortest_form_is_refused(n, form):
    received, _, ended = check(server(BINARY, b"ok") + server(BINARY, PAYLOAD[:n], form=form))
    assert received == [b(b"ok")] and ended == "dropped"


@pytest.mark.parametrize("payload", [b"", b"Hello", bytes(range(125))])
def test_2_ping_is_answered_with_its_payload(payload):
    _, frames, ended = check(server(PING, payload) + server(BINARY, b"after"), [b(b"after")])
    assert frames == [(PONG, payload)] and ended == "open"


def test_2_unsolicited_pong_is_ignored():
    _, frames, _ = check(server(PONG, b"unasked") + server(BINARY, b"after"), [b(b"after")])
    assert frames == []


@pytest.mark.parametrize("rsv", [1, 2, 4, 7])
def test_3_reserved_bits_are_refused(rsv):
    received, _, ended = check(server(BINARY, b"ok") + server(BINARY, b"x", rsv=rsv))
    assert received == [b(b"ok")] and ended == "dropped"


@pytest.mark.parametrize("opcode", [3, 7, 11, 15])
def test_4_reserved_opcodes_are_refused(opcode):
    received, _, ended = check(server(BINARY, b"ok") + server(opcode, b"x"))
    assert received == [b(b"ok")] and ended == "dropped"


def test_5_fragments_with_a_ping_between_them():
    data = server(BINARY, b"frag", fin=False) + server(PING, b"p") + server(CONT, b"men", fin=False) + server(CONT, b"ts")
    _, frames, _ = check(data, [b(b"fragments")])
    assert frames == [(PONG, b"p")]


def test_5_text_message_is_delivered_as_text():
    check(server(TEXT, b"hello", fin=False) + server(CONT, b" there"), [(False, b"hello there")])


@pytest.mark.parametrize("data", [
    server(CONT, b"x"),  # continuation outside a message
    server(BINARY, b"a", fin=False) + server(BINARY, b"b"),  # new message inside one
    server(PING, b"x", fin=False),  # fragmented control frame
    server(PING, bytes(126)),  # control frame over 125 bytes
])
def test_5_broken_fragmentation_is_refused(data):
    assert check(data)[2] == "dropped"


@pytest.mark.parametrize("code", [1000, 1001, 3000, 4999])
def test_7_close_is_answered_with_a_normal_close(code):
    # (what comes after the close is delivered or not as Autobahn does: the same)
    _, frames, _ = check(server(CLOSE, code.to_bytes(2, "big") + b"bye") + server(BINARY, b"late"))
    assert frames == [(CLOSE, (1000).to_bytes(2, "big"))]


@pytest.mark.parametrize("payload", [b"\x03", (999).to_bytes(2, "big"), (1004).to_bytes(2, "big"),
                                     (1000).to_bytes(2, "big") + b"\xff"])
def test_7_bad_close_frames_are_refused(payload):
    check(server(CLOSE, payload) + server(BINARY, b"late"))


def test_9_message_at_the_cap_and_above():
    check(server(BINARY, PAYLOAD[:CAP]), [b(PAYLOAD[:CAP])])
    received, _, ended = check(server(BINARY, b"ok") + server(BINARY, b"", length=CAP + 1, form=64)[:10])
    assert received == [b(b"ok")] and ended == "dropped"
    parts = server(BINARY, PAYLOAD[:CAP], fin=False) + server(CONT, b"x")
    assert check(parts) == ([], [], "dropped")
