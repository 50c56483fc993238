"""A lean RFC 6455 receive path, sans-IO, for both ends.

Once Autobahn has done the opening handshake, :class:`FrameReader` parses
what the peer sends: it checks each frame header as Autobahn does (reserved
bits, reserved opcodes, masking required from a client and refused from a
server, control frames final and at most
125 bytes, a close frame's payload not 1 byte, minimal length encoding,
continuation frames only inside a fragmented message and data frames never
inside one), refuses a frame or message above the size caps from its header,
before buffering its payload, unmasks and joins the fragments of a message.
What it finds comes back from :meth:`FrameReader.feed` as a list of events:

* ``(1, payload)`` a text and ``(2, payload)`` a binary message, whole;
* ``(8, payload)`` close, ``(9, payload)`` ping, ``(10, payload)`` pong, in
  the order they came, also between the fragments of a message;
* ``(FAIL, code, reason)`` the stream is broken (``code`` 1002 protocol
  error, 1009 too big); nothing follows and the reader stays failed.

What to do about a close or a ping (the close handshake, the pong) is the
protocol's: :class:`LeanReceive` hands them to Autobahn's own handlers, so the
two receive paths share the closing state machine.  Autobahn's per-frame
path costs a handful of method calls, a masker object and a header object per
frame; here an unfragmented message costs one slice (and on a server one XOR).
"""

from __future__ import annotations

try:  # Autobahn's compiled masker (NVX) when it has one: faster above 1 KiB
    from autobahn.websocket.xormasker import USES_NVX as _NVX, create_xor_masker as _masker
except ImportError:  # pragma: no cover - older Autobahn
    _NVX, _masker = False, None

FAIL = -1
PROTOCOL_ERROR = 1002
TOO_BIG = 1009
# Frames one fragmented message may take.  Each costs a header on the wire
# and, when not empty, a reference until the message is whole: without a
# bound, empty continuation frames (6 bytes each) would hold memory and count
# nothing against the message cap.  Browsers, Autobahn, paho-mqtt and MQTT.js
# send a message in one frame, or in a few when it is large.
MAX_FRAGMENTS = 1024
_MAX_LENGTH = 0x7FFFFFFFFFFFFFFF


def unmask_python(data, mask: bytes) -> bytes:
    """``data`` XOR the repeated 4-byte ``mask`` (RFC 6455 section 5.3)."""
    n = len(data)
    if n == 0:
        return b""
    if n > 1024 and _NVX:
        return _masker(mask, n).process(data)
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


try:  # the same in C (_wsmask.pyx), when it was built at install
    from linchpin_common._wsmask import unmask
except ImportError:
    unmask = unmask_python


class FrameReader:
    """The peer's frames in, whole messages and control frames out.

    ``max_frame`` and ``max_message`` are the payload caps in bytes (0: no
    cap), Autobahn's ``maxFramePayloadSize`` and ``maxMessagePayloadSize``;
    ``masked`` is True on a server (a client's frames must be masked) and
    False on a client (a server's must not be).  At most one frame (header
    and payload) is ever buffered, plus the fragments of the message in
    progress: at most ``max_fragments`` frames, empty ones kept as nothing,
    so a message in progress holds its payload and at most a reference per
    frame beyond it.  The caps may be changed between calls to :meth:`feed`
    (the gateway keeps them small until a client has logged in).
    """

    __slots__ = ("max_frame", "max_message", "max_fragments", "_key", "_chunks", "_buffered", "_need", "_parts",
                 "_opcode", "_total", "_fragments", "failed")

    def __init__(self, max_frame: int = 0, max_message: int = 0, masked: bool = True,
                 max_fragments: int = MAX_FRAGMENTS):
        self.max_frame = max_frame
        self.max_message = max_message
        self.max_fragments = max_fragments
        self._key = 4 if masked else 0  # bytes of masking key after the length
        self._chunks: list = []  # bytes received, not yet a whole frame
        self._buffered = 0
        self._need = 2  # bytes needed before parsing can go on
        self._parts: list = []  # payloads of the fragmented message in progress
        self._opcode = 0  # its opcode, 0 when no message is in progress
        self._total = 0  # its size so far
        self._fragments = 0  # its frames so far
        self.failed = False

    def feed(self, data: bytes) -> list:
        if self.failed:
            return []
        if type(data) is not bytes:
            data = bytes(data)
        if self._chunks:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered < self._need:
                return []
            buf = b"".join(self._chunks)
            self._chunks = []
        else:
            buf = data
        events: list = []
        pos = 0
        end = len(buf)
        need = 2
        max_frame = self.max_frame
        key = self._key
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            # The checks Autobahn makes on the first two bytes, in its order.
            if b0 & 0x70:
                return self._fail(events, PROTOCOL_ERROR, f"RSV = {(b0 & 0x70) >> 4} and no extension negotiated")
            if not b1 & 0x80:
                if key:
                    return self._fail(events, PROTOCOL_ERROR, "unmasked client-to-server frame")
            elif not key:
                return self._fail(events, PROTOCOL_ERROR, "masked server-to-client frame")
            if opcode > 7:
                if not b0 & 0x80:
                    return self._fail(events, PROTOCOL_ERROR, "fragmented control frame")
                if length > 125:
                    return self._fail(events, PROTOCOL_ERROR, "control frame with payload length > 125 octets")
                if opcode > 10:
                    return self._fail(events, PROTOCOL_ERROR, f"control frame using reserved opcode {opcode}")
                if opcode == 8 and length == 1:
                    return self._fail(events, PROTOCOL_ERROR, "received close control frame with payload len 1")
            elif opcode > 2:
                return self._fail(events, PROTOCOL_ERROR, f"data frame using reserved opcode {opcode}")
            elif opcode == 0:
                if not self._opcode:
                    return self._fail(events, PROTOCOL_ERROR,
                                      "received continuation data frame outside fragmented message")
            elif self._opcode:
                return self._fail(events, PROTOCOL_ERROR,
                                  "received non-continuation data frame while inside fragmented message")
            if length < 126:
                start = pos + 2 + key
                if start > end:
                    need = 2 + key
                    break
            elif length == 126:
                start = pos + 4 + key
                if start > end:
                    need = 4 + key
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                if length < 126:
                    return self._fail(events, PROTOCOL_ERROR,
                                      "invalid data frame length (not using minimal length encoding)")
            else:
                start = pos + 10 + key
                if start > end:
                    need = 10 + key
                    break
                wide = int.from_bytes(buf[pos + 2:pos + 10], "big")
                if wide > _MAX_LENGTH:
                    return self._fail(events, PROTOCOL_ERROR, "invalid data frame length (>2^63)")
                length = wide
                if length < 65536:
                    return self._fail(events, PROTOCOL_ERROR,
                                      "invalid data frame length (not using minimal length encoding)")
            if opcode < 8:
                # The caps, before a byte of the payload is kept.
                if self.max_message and length > self.max_message - self._total:
                    return self._fail(events, TOO_BIG, f"received WebSocket message size {int(self._total) + int(length)} "
                                                       f"exceeds payload limit of {self.max_message} octets")
                if max_frame and length > max_frame:
                    return self._fail(events, TOO_BIG, f"received WebSocket frame size {length} exceeds payload "
                                                       f"limit of {max_frame} octets")
            if length > end - start:
                need = start - pos
                need += length  # in Python ints: a length may be up to 2**63 - 1
                break
            stop = start + length
            if not key:
                payload = buf[start:stop]
            elif length > 1024:  # unmasked from where it lies: a slice would be one more copy
                payload = unmask(memoryview(buf)[start:stop], buf[start - 4:start])
            else:
                payload = unmask(buf[start:stop], buf[start - 4:start]) if length else b""
            fin = b0 & 0x80
            pos = stop
            if opcode > 7:
                events.append((opcode, payload))
            elif fin and not self._opcode:
                events.append((opcode, payload))  # the common case: a whole message in one frame
            else:
                if opcode:
                    self._opcode = opcode
                self._fragments += 1
                if self._fragments > self.max_fragments:
                    return self._fail(events, TOO_BIG, f"received WebSocket message in more than "
                                                       f"{self.max_fragments} fragments")
                if length:
                    self._parts.append(payload)
                    self._total += length
                if fin:
                    parts = self._parts
                    events.append((self._opcode, parts[0] if len(parts) == 1 else b"".join(parts)))
                    self._parts = []
                    self._opcode = 0
                    self._total = 0
                    self._fragments = 0
        if pos < end:
            rest = buf[pos:] if pos else buf
            self._chunks.append(rest)
            self._buffered = end - pos
            self._need = need
        return events

    def _fail(self, events: list, code: int, reason: str) -> list:
        self.failed = True
        self._chunks = []
        self._parts = []
        events.append((FAIL, code, reason))
        return events


class _SendQueue(list):
    """Autobahn's send queue (``append``, ``popleft``, ``len``) as a list:
    it is almost always empty, and an empty deque costs 760 bytes."""

    __slots__ = ()

    def popleft(self):
        return self.pop(0)


class LeanReceive:
    """Mixed into an Autobahn ``WebSocketServerProtocol`` or
    ``WebSocketClientProtocol`` (before it): once the opening handshake is
    done, received bytes go through a :class:`FrameReader` instead of
    Autobahn's ``processData``.

    Whole messages go to ``onMessage(payload, isBinary)``; close frames to
    Autobahn's ``onCloseFrame`` (the close handshake, close code and reason
    checks), pings to ``_onPing`` (the pong), pongs to ``_onPong``; a broken stream is failed as Autobahn fails it
    (``_protocol_violation`` / ``_fail_connection``).  Events are handled in
    order until the connection is closed, as Autobahn does.  Call
    :meth:`start_lean_receive` from ``onOpen``.
    """

    _frames: FrameReader | None = None

    def start_lean_receive(self, max_message: int | None = None) -> None:
        """``max_message``: a smaller message cap to begin with (the reader's
        ``max_message`` may be raised later), else Autobahn's."""
        if max_message is None:
            max_message = self.maxMessagePayloadSize
        self._frames = FrameReader(self.maxFramePayloadSize, max_message, self.factory.isServer)
        # What Autobahn keeps for its own receive path or from the handshake
        # and never reads again: about 4 KiB a connection, for its lifetime.
        self.utf8validator = None  # utf8validateIncoming is off; close reasons get their own
        self.http_request_data = self.http_response_data = None
        self.http_headers = {}  # about 1.4 KiB; read only while the handshake is processed
        self.send_queue = _SendQueue(self.send_queue)  # an empty deque is 760 bytes
        # What came after the handshake in the same read: ours now; Autobahn
        # finds nothing left to parse when onOpen returns.
        rest, self.data = self.data, b""
        if rest:
            self._lean_events(self._frames.feed(rest))

    def dataReceived(self, data: bytes) -> None:
        frames = self._frames
        if frames is None:
            super().dataReceived(data)
        elif self.state != self.STATE_CLOSED:
            self._lean_events(frames.feed(data))

    def _lean_events(self, events: list) -> None:
        closed = self.STATE_CLOSED
        for event in events:
            if self.state == closed:
                return
            opcode = event[0]
            if opcode == 2:
                self.onMessage(event[1], True)
            elif opcode == 1:
                self.onMessage(event[1], False)
            elif opcode == 8:
                payload = event[1]
                code = int.from_bytes(payload[:2], "big") if len(payload) > 1 else None
                if self.onCloseFrame(code, payload[2:] if len(payload) > 2 else None):
                    return
            elif opcode == 9:
                self._onPing(event[1])
            elif opcode == 10:
                self._onPong(event[1])
            elif opcode == FAIL:
                if event[1] == PROTOCOL_ERROR:
                    self._protocol_violation(event[2])
                else:
                    self._fail_connection(event[1], event[2])
                return
