"""MQTT 3.1.1 codec, sans-IO: bytes in, packets out (PROTOCOL.md section 4).

No I/O and no Twisted here: `Parser.feed` takes whatever bytes the transport
delivered (WebSocket messages need not line up with packets, MQTT 3.1.1
section 6) and returns the complete packets; `encode` turns a packet back
into bytes.

Framing (MQTT 3.1.1 section 2.2)::

    byte 0        packet type (high nibble) | flags (low nibble)
    bytes 1..4    remaining length: little-endian base-128 varint, 7 bits per
                  byte, high bit = "another byte follows", at most 4 bytes
                  (so at most 268,435,455)
    body          exactly `remaining length` bytes: variable header + payload

Strings in the body are a 2-byte big-endian length and that many bytes of
UTF-8 (no U+0000, no surrogates); binary fields (password, will message) are
a 2-byte length and raw bytes; packet identifiers are 2 bytes big-endian and
never 0. A PUBLISH payload is the rest of the body, without a length prefix.

The parser never trusts a length it has not bounded. The fixed header is
checked as soon as its bytes arrive: the type and flags on the first byte,
then the remaining length against `max_remaining_length` (PacketTooLarge)
before a single body byte is buffered. The buffer therefore never holds more
than one incomplete packet: at most 5 + max_remaining_length bytes.

Supported packets are the MQTT 3.1.1 set the gateway speaks: CONNECT,
CONNACK, PUBLISH (QoS 0, 1 and 2 parse; refusing QoS 2 is the session's
job), PUBACK, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP and
DISCONNECT. PUBREC, PUBREL, PUBCOMP and the reserved types 0 and 15 are
protocol errors.

CONNECT with protocol level 3 ("MQIsdp", MQTT 3.1) or 4 ("MQTT", 3.1.1) is
parsed completely: both share one layout. For any other level (e.g. 5, whose
CONNECT carries properties) only the protocol name and level are read and
the rest of the body is not interpreted, so the session can still answer
CONNACK 1 ("unacceptable protocol version") as MQTT requires.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable, Union

__all__ = [
    "CONNACK_ACCEPTED",
    "CONNACK_BAD_CREDENTIALS",
    "CONNACK_BAD_PROTOCOL",
    "CONNACK_IDENTIFIER_REJECTED",
    "CONNACK_NOT_AUTHORIZED",
    "CONNACK_SERVER_UNAVAILABLE",
    "DEFAULT_MAX_REMAINING_LENGTH",
    "MAX_REMAINING_LENGTH",
    "SUBACK_FAILURE",
    "Connack",
    "Connect",
    "Disconnect",
    "Packet",
    "PacketTooLarge",
    "Parser",
    "Pingreq",
    "Pingresp",
    "ProtocolError",
    "Puback",
    "Publish",
    "Suback",
    "Subscribe",
    "Unsuback",
    "Unsubscribe",
    "encode",
    "encode_publish",
    "encode_publish_head",
    "encode_remaining_length",
]

# CONNACK return codes (MQTT 3.1.1 table 3.1).
CONNACK_ACCEPTED = 0
CONNACK_BAD_PROTOCOL = 1
CONNACK_IDENTIFIER_REJECTED = 2
CONNACK_SERVER_UNAVAILABLE = 3
CONNACK_BAD_CREDENTIALS = 4
CONNACK_NOT_AUTHORIZED = 5

SUBACK_FAILURE = 0x80

#: Largest value a 4-byte remaining-length varint can carry.
MAX_REMAINING_LENGTH = 268_435_455
#: The gateway's default packet cap (PROTOCOL.md section 4): 1 MiB.
DEFAULT_MAX_REMAINING_LENGTH = 1_048_576


def websocket_limit(max_packet: int = DEFAULT_MAX_REMAINING_LENGTH) -> int:
    """The WebSocket frame and message size limit that goes with an MQTT
    packet cap: one packet plus a few headers' worth of slack for packets
    sharing its message, so the WebSocket layer never buffers more than the
    MQTT layer would accept."""
    return max_packet + 64

# Packet type numbers (high nibble of the first byte).
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

_NAMES = {
    CONNECT: "CONNECT",
    CONNACK: "CONNACK",
    PUBLISH: "PUBLISH",
    PUBACK: "PUBACK",
    SUBSCRIBE: "SUBSCRIBE",
    SUBACK: "SUBACK",
    UNSUBSCRIBE: "UNSUBSCRIBE",
    UNSUBACK: "UNSUBACK",
    PINGREQ: "PINGREQ",
    PINGRESP: "PINGRESP",
    DISCONNECT: "DISCONNECT",
}


# ---------------------------------------------------------------------------
# Errors


class ProtocolError(Exception):
    """The peer sent bytes that are not valid MQTT 3.1.1.

    ``str(exc)`` is a short human reason. ``packets`` holds the packets that
    the failing ``Parser.feed`` call had completed before the bad bytes (they
    arrived first, so a session may act on them before closing); it is empty
    when the error is raised again by a later ``feed``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.packets: list[Packet] = []


class PacketTooLarge(ProtocolError):
    """The fixed header announced a remaining length above the parser's cap."""


# ---------------------------------------------------------------------------
# Packets


@dataclass(frozen=True, slots=True, eq=True)
class Connect:
    client_id: str
    username: str | None
    password: bytes | None
    keep_alive: int
    clean_session: bool
    protocol_name: str = "MQTT"
    protocol_level: int = 4
    will_topic: str | None = None
    will_message: bytes | None = None
    will_qos: int = 0
    will_retain: bool = False


@dataclass(frozen=True, slots=True, eq=True)
class Connack:
    return_code: int
    session_present: bool = False


@dataclass(frozen=True, slots=True, eq=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 0
    packet_id: int | None = None
    retain: bool = False
    dup: bool = False
    # The packet exactly as received, set by the parser for a QoS 0 PUBLISH
    # without retain that filled its WebSocket message alone: forwarding it
    # to another QoS 0 subscriber of the same topic needs no re-encoding.
    raw: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True, eq=True)
class Puback:
    packet_id: int


@dataclass(frozen=True, slots=True, eq=True)
class Subscribe:
    packet_id: int
    topics: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True, eq=True)
class Suback:
    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True, eq=True)
class Unsubscribe:
    packet_id: int
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True, eq=True)
class Unsuback:
    packet_id: int


@dataclass(frozen=True, slots=True, eq=True)
class Pingreq:
    pass


@dataclass(frozen=True, slots=True, eq=True)
class Pingresp:
    pass


@dataclass(frozen=True, slots=True, eq=True)
class Disconnect:
    pass


Packet = Union[
    Connect,
    Connack,
    Publish,
    Puback,
    Subscribe,
    Suback,
    Unsubscribe,
    Unsuback,
    Pingreq,
    Pingresp,
    Disconnect,
]

# The empty packets are immutable, so the parser hands out shared instances.
_PINGREQ = Pingreq()
_PINGRESP = Pingresp()
_DISCONNECT = Disconnect()


# ---------------------------------------------------------------------------
# Fixed-header tables, computed once


def _first_byte_error(first: int) -> str | None:
    """Why a packet starting with byte `first` is malformed, or None."""
    ptype, flags = first >> 4, first & 0x0F
    if ptype not in _NAMES:
        return f"unsupported packet type {ptype}"
    if ptype == PUBLISH:
        qos = (flags >> 1) & 3
        if qos == 3:
            return "invalid QoS 3 in PUBLISH"
        if qos == 0 and flags & 0x08:
            return "DUP flag set on QoS 0 PUBLISH"
        return None
    expected = 0b0010 if ptype in (SUBSCRIBE, UNSUBSCRIBE) else 0
    if flags != expected:
        return f"reserved flags set on {_NAMES[ptype]}"
    return None


# Indexed by the first byte of a packet: None when it is acceptable.
_FIRST_BYTE_ERRORS: tuple[str | None, ...] = tuple(
    _first_byte_error(b) for b in range(256)
)

# Packets whose remaining length is fixed; checked as soon as the header is
# complete, so e.g. a PINGREQ announcing a body is refused before buffering it.
_FIXED_LENGTHS = {
    CONNACK: 2,
    PUBACK: 2,
    UNSUBACK: 2,
    PINGREQ: 0,
    PINGRESP: 0,
    DISCONNECT: 0,
}


# ---------------------------------------------------------------------------
# Body decoders. Each takes the fixed-header flags, the bytes holding the
# packet and the bounds of its body, data[start:end], and returns a packet or
# raises ProtocolError. Working on absolute offsets into the bytes the
# transport delivered, instead of a sliced body, keeps the payload of a
# packet that arrived in one chunk to a single copy.


def _read_string(data: bytes, pos: int, end: int, what: str) -> tuple[str, int]:
    """Read a UTF-8 string field at `pos`; return it and the next position."""
    raw, stop = _read_binary(data, pos, end, what)
    try:
        # Python's strict UTF-8 decoder also refuses overlong forms and
        # encoded surrogates, which MQTT 1.5.3 forbids as well.
        text = raw.decode()
    except UnicodeDecodeError:
        raise ProtocolError(f"invalid UTF-8 in {what}") from None
    if "\x00" in text:
        raise ProtocolError(f"U+0000 in {what}")
    return text, stop


def _read_binary(data: bytes, pos: int, end: int, what: str) -> tuple[bytes, int]:
    """Read a length-prefixed binary field at `pos`."""
    start = pos + 2
    if start > end:
        raise ProtocolError(f"truncated {what}")
    stop = start + ((data[pos] << 8) | data[pos + 1])
    if stop > end:
        raise ProtocolError(f"truncated {what}")
    return data[start:stop], stop


def _read_packet_id(data: bytes, pos: int, end: int, name: str) -> int:
    if pos + 2 > end:
        raise ProtocolError(f"truncated {name}")
    packet_id = (data[pos] << 8) | data[pos + 1]
    if packet_id == 0:
        raise ProtocolError(f"packet identifier 0 in {name}")
    return packet_id


def _decode_connect(flags: int, data: bytes, start: int, end: int) -> Connect:
    name, pos = _read_string(data, start, end, "protocol name")
    if name not in ("MQTT", "MQIsdp"):
        raise ProtocolError(f"unknown protocol name {name!r}")
    if pos >= end:
        raise ProtocolError("truncated CONNECT")
    level = data[pos]
    if level not in (3, 4):
        # Another protocol version: its layout past this byte is not ours to
        # judge. The session answers CONNACK 1 and closes.
        return Connect(
            client_id="",
            username=None,
            password=None,
            keep_alive=0,
            clean_session=True,
            protocol_name=name,
            protocol_level=level,
        )
    if pos + 4 > end:
        raise ProtocolError("truncated CONNECT")
    cflags = data[pos + 1]
    keep_alive = (data[pos + 2] << 8) | data[pos + 3]
    pos += 4

    if cflags & 0x01:
        raise ProtocolError("reserved flag set in CONNECT flags")
    has_will = bool(cflags & 0x04)
    will_qos = (cflags >> 3) & 3
    will_retain = bool(cflags & 0x20)
    has_password = bool(cflags & 0x40)
    has_username = bool(cflags & 0x80)
    if will_qos == 3:
        raise ProtocolError("invalid will QoS 3 in CONNECT")
    if not has_will and (will_qos or will_retain):
        raise ProtocolError("will QoS or retain set without will flag in CONNECT")
    if has_password and not has_username:
        raise ProtocolError("password flag set without username flag in CONNECT")

    client_id, pos = _read_string(data, pos, end, "client identifier")
    will_topic = will_message = username = password = None
    if has_will:
        will_topic, pos = _read_string(data, pos, end, "will topic")
        will_message, pos = _read_binary(data, pos, end, "will message")
    if has_username:
        username, pos = _read_string(data, pos, end, "username")
    if has_password:
        password, pos = _read_binary(data, pos, end, "password")
    if pos != end:
        raise ProtocolError("trailing bytes in CONNECT")
    return Connect(
        client_id=client_id,
        username=username,
        password=password,
        keep_alive=keep_alive,
        clean_session=bool(cflags & 0x02),
        protocol_name=name,
        protocol_level=level,
        will_topic=will_topic,
        will_message=will_message,
        will_qos=will_qos,
        will_retain=will_retain,
    )


def _decode_connack(flags: int, data: bytes, start: int, end: int) -> Connack:
    # The length (2) was checked with the fixed header.
    ack_flags, code = data[start], data[start + 1]
    if ack_flags & 0xFE:
        raise ProtocolError("reserved bits set in CONNACK acknowledge flags")
    if ack_flags and code:
        raise ProtocolError("session present set on refused CONNACK")
    return Connack(code, bool(ack_flags))


# A frozen dataclass's __init__ sets each field through object.__setattr__,
# which makes it about twice as slow as writing the slots directly. PUBLISH
# is the relay's hot path, so the parser builds Publish objects through the
# slot descriptors; the assertion keeps this in step with the class.
assert [f.name for f in fields(Publish)] == [
    "topic", "payload", "qos", "packet_id", "retain", "dup", "raw"
], "update the Publish slot setters below and _decode_publish"
_new = object.__new__
_set_topic = Publish.topic.__set__  # type: ignore[attr-defined]
_set_payload = Publish.payload.__set__  # type: ignore[attr-defined]
_set_qos = Publish.qos.__set__  # type: ignore[attr-defined]
_set_packet_id = Publish.packet_id.__set__  # type: ignore[attr-defined]
_set_retain = Publish.retain.__set__  # type: ignore[attr-defined]
_set_dup = Publish.dup.__set__  # type: ignore[attr-defined]
_set_raw = Publish.raw.__set__  # type: ignore[attr-defined]


def _decode_publish(flags: int, data: bytes, start: int, end: int) -> Publish:
    # The hot path, so the topic read is inlined. QoS 3 and DUP on QoS 0 were
    # refused with the first byte.
    pos = start + 2
    if pos > end:
        raise ProtocolError("truncated topic in PUBLISH")
    stop = pos + ((data[start] << 8) | data[start + 1])
    if stop > end:
        raise ProtocolError("truncated topic in PUBLISH")
    try:
        topic = data[pos:stop].decode()
    except UnicodeDecodeError:
        raise ProtocolError("invalid UTF-8 in topic") from None
    if not topic:
        raise ProtocolError("empty topic in PUBLISH")
    if "+" in topic or "#" in topic:
        raise ProtocolError("wildcard in PUBLISH topic")
    if "\x00" in topic:
        raise ProtocolError("U+0000 in topic")
    qos = (flags >> 1) & 3
    packet_id = None
    if qos:
        packet_id = _read_packet_id(data, stop, end, "PUBLISH")
        stop += 2
    packet = _new(Publish)
    _set_topic(packet, topic)
    _set_payload(packet, data[stop:end])  # the one copy of the payload
    _set_qos(packet, qos)
    _set_packet_id(packet, packet_id)
    _set_retain(packet, bool(flags & 0x01))
    _set_dup(packet, bool(flags & 0x08))
    _set_raw(packet, None)
    return packet


def _decode_puback(flags: int, data: bytes, start: int, end: int) -> Puback:
    return Puback(_read_packet_id(data, start, end, "PUBACK"))


def _decode_subscribe(flags: int, data: bytes, start: int, end: int) -> Subscribe:
    packet_id = _read_packet_id(data, start, end, "SUBSCRIBE")
    pos = start + 2
    topics = []
    while pos < end:
        topic, pos = _read_string(data, pos, end, "topic filter")
        if not topic:
            raise ProtocolError("empty topic filter in SUBSCRIBE")
        if pos >= end:
            raise ProtocolError("truncated SUBSCRIBE")
        qos = data[pos]
        if qos > 2:  # covers the 6 reserved upper bits too
            raise ProtocolError(f"invalid requested QoS byte 0x{qos:02x} in SUBSCRIBE")
        topics.append((topic, qos))
        pos += 1
    if not topics:
        raise ProtocolError("SUBSCRIBE without topic filters")
    return Subscribe(packet_id, tuple(topics))


def _decode_suback(flags: int, data: bytes, start: int, end: int) -> Suback:
    packet_id = _read_packet_id(data, start, end, "SUBACK")
    codes = tuple(data[start + 2 : end])
    if not codes:
        raise ProtocolError("SUBACK without return codes")
    for code in codes:
        if code not in (0, 1, 2, SUBACK_FAILURE):
            raise ProtocolError(f"invalid SUBACK return code 0x{code:02x}")
    return Suback(packet_id, codes)


def _decode_unsubscribe(flags: int, data: bytes, start: int, end: int) -> Unsubscribe:
    packet_id = _read_packet_id(data, start, end, "UNSUBSCRIBE")
    pos = start + 2
    topics = []
    while pos < end:
        topic, pos = _read_string(data, pos, end, "topic filter")
        if not topic:
            raise ProtocolError("empty topic filter in UNSUBSCRIBE")
        topics.append(topic)
    if not topics:
        raise ProtocolError("UNSUBSCRIBE without topic filters")
    return Unsubscribe(packet_id, tuple(topics))


def _decode_unsuback(flags: int, data: bytes, start: int, end: int) -> Unsuback:
    return Unsuback(_read_packet_id(data, start, end, "UNSUBACK"))


_Decoder = Callable[[int, bytes, int, int], Packet]

# Indexed by packet type; the first-byte check has already refused the
# types that have no decoder.
_DECODERS: dict[int, _Decoder] = {
    CONNECT: _decode_connect,
    CONNACK: _decode_connack,
    PUBLISH: _decode_publish,
    PUBACK: _decode_puback,
    SUBSCRIBE: _decode_subscribe,
    SUBACK: _decode_suback,
    UNSUBSCRIBE: _decode_unsubscribe,
    UNSUBACK: _decode_unsuback,
    PINGREQ: lambda flags, data, start, end: _PINGREQ,
    PINGRESP: lambda flags, data, start, end: _PINGRESP,
    DISCONNECT: lambda flags, data, start, end: _DISCONNECT,
}


# ---------------------------------------------------------------------------
# Stream parser


def _parse_header(data: bytes, pos: int, end: int, cap: int) -> tuple[int, int] | None:
    """Check the fixed header at data[pos:end].

    Returns (header length, remaining length), or None while the header is
    incomplete. Raises as soon as the bytes present are wrong, and before
    any body byte is needed.
    """
    first = data[pos]
    error = _FIRST_BYTE_ERRORS[first]
    if error is not None:
        raise ProtocolError(error)
    length = 0
    shift = 0
    i = pos + 1
    while True:
        if i >= end:
            return None
        byte = data[i]
        i += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift == 28:  # the 4th length byte says "more follows"
            raise ProtocolError("remaining length field longer than 4 bytes")
    if length > cap:
        raise PacketTooLarge(f"remaining length exceeds {cap} bytes")
    fixed = _FIXED_LENGTHS.get(first >> 4)
    if fixed is not None and length != fixed:
        name = _NAMES[first >> 4]
        raise ProtocolError(
            f"trailing bytes in {name}" if length > fixed else f"truncated {name}"
        )
    return i - pos, length


class Parser:
    """Incremental MQTT 3.1.1 stream parser.

    ``feed(data)`` returns every packet completed by `data`. Complete packets
    are decoded straight out of `data`; only the start of an incomplete
    packet at the end is kept, in a bytearray that later chunks are appended
    to (never re-copying what it holds). After a ProtocolError the parser is
    dead and every later ``feed`` raises the same error again.
    """

    __slots__ = ("_cap", "_buf", "_header_len", "_total", "_error")

    def __init__(self, max_remaining_length: int = DEFAULT_MAX_REMAINING_LENGTH) -> None:
        if not 0 <= max_remaining_length <= MAX_REMAINING_LENGTH:
            raise ValueError(f"max_remaining_length must be in 0..{MAX_REMAINING_LENGTH}")
        self._cap = max_remaining_length
        # The bytes of the one incomplete packet at the end of the stream.
        self._buf = bytearray()
        # Once that packet's fixed header is complete: the header length and
        # the packet's total length (header + body). _total is 0 before that.
        self._header_len = 0
        self._total = 0
        self._error: ProtocolError | None = None

    @property
    def max_remaining_length(self) -> int:
        """The packet cap; it may be changed between calls to :meth:`feed`."""
        return self._cap

    @max_remaining_length.setter
    def max_remaining_length(self, value: int) -> None:
        self._cap = value

    @property
    def buffered(self) -> int:
        """Number of bytes held for the packet that is not complete yet."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        """Add bytes from the stream; return the packets they complete.

        `bytes` is the cheapest input; anything else is copied to bytes.
        """
        if self._error is not None:
            error = self._error
            raise type(error)(str(error))
        if type(data) is not bytes:
            data = bytes(data)
        packets: list[Packet] = []
        try:
            self._feed(data, packets)
        except ProtocolError as error:
            error.packets = packets
            self._error = error
            self._buf = bytearray()
            self._total = 0
            raise
        return packets

    def feed_to_error(self, data: bytes) -> tuple[list[Packet], ProtocolError | None]:
        """Like :meth:`feed`, but returns ``(packets, error)``: the packets
        complete before any malformed bytes, and the error (or None), so a
        session can act on the good packets before it closes."""
        try:
            return self.feed(data), None
        except ProtocolError as error:
            return error.packets, error

    def _feed(self, data: bytes, packets: list[Packet]) -> None:
        end = len(data)
        pos = 0
        if self._buf:
            pos = self._resume(data, packets)
            if self._buf:  # `data` was used up without completing the packet
                return
        cap = self._cap
        while pos < end:
            parsed = _parse_header(data, pos, end, cap)
            if parsed is None:
                # Incomplete fixed header: at most 4 bytes.
                self._buf = bytearray(memoryview(data)[pos:])
                return
            header_len, length = parsed
            body = pos + header_len
            stop = body + length
            if stop > end:
                # Incomplete body: keep what there is; the header has been
                # checked, so this stays within header + cap bytes.
                self._buf = bytearray(memoryview(data)[pos:])
                self._header_len = header_len
                self._total = header_len + length
                return
            first = data[pos]
            if first >> 4 == PUBLISH:  # the relay's hot path: a direct call once compiled
                packet = _decode_publish(first & 0x0F, data, body, stop)
                if first == 0x30 and pos == 0 and stop == end:
                    _set_raw(packet, data)  # QoS 0, no retain, the whole input: no copy
            else:
                packet = _DECODERS[first >> 4](first & 0x0F, data, body, stop)
            packets.append(packet)
            pos = stop

    def _resume(self, data: bytes, packets: list[Packet]) -> int:
        """Complete the buffered packet from `data`; return bytes consumed."""
        used = 0
        if not self._total:
            # The fixed header itself is incomplete. It is at most 5 bytes, so
            # look at the buffered part plus the next few bytes of `data`.
            held = len(self._buf)
            head = bytes(self._buf) + data[: 5 - held]
            parsed = _parse_header(head, 0, len(head), self._cap)
            if parsed is None:
                self._buf += data  # all of it: fewer than 5 - held bytes
                return len(data)
            header_len, length = parsed
            used = header_len - held
            self._buf = bytearray(head[:header_len])
            self._header_len = header_len
            self._total = header_len + length
        take = min(self._total - len(self._buf), len(data) - used)
        self._buf += memoryview(data)[used : used + take]
        used += take
        if len(self._buf) == self._total:
            # bytes() is the second copy of a payload that came in pieces.
            packet = bytes(self._buf)
            self._buf = bytearray()
            self._total = 0
            first = packet[0]
            packets.append(
                _DECODERS[first >> 4](first & 0x0F, packet, self._header_len, len(packet))
            )
        return used


# ---------------------------------------------------------------------------
# Encoding


def encode_remaining_length(n: int) -> bytes:
    """The fixed header's variable-length encoding of `n` (1 to 4 bytes)."""
    if n < 128:
        if n < 0:
            raise ValueError(f"remaining length {n} is negative")
        return bytes((n,))
    if n > MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length {n} exceeds {MAX_REMAINING_LENGTH}")
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _packet(first: int, *parts: bytes) -> bytes:
    length = sum(map(len, parts))
    return b"".join((bytes((first,)), encode_remaining_length(length), *parts))


def _packet_id(packet_id: int | None) -> bytes:
    if packet_id is None or not 0 < packet_id <= 0xFFFF:
        raise ValueError(f"packet identifier {packet_id!r} is not in 1..65535")
    return packet_id.to_bytes(2, "big")


def _string(text: str, what: str) -> bytes:
    # A lone surrogate makes .encode() raise UnicodeEncodeError (a ValueError).
    data = text.encode("utf-8")
    if "\x00" in text:
        raise ValueError(f"U+0000 in {what}")
    return _binary(data, what)


def _binary(data: bytes, what: str) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"{what} is longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


def _check_qos(qos: int, what: str) -> None:
    if qos not in (0, 1, 2):
        raise ValueError(f"{what} {qos!r} is not 0, 1 or 2")


def _encode_connect(p: Connect) -> bytes:
    cflags = 0x02 if p.clean_session else 0
    parts = [_string(p.client_id, "client identifier")]
    if p.will_topic is not None:
        if p.will_message is None:
            raise ValueError("will_topic given without will_message")
        _check_qos(p.will_qos, "will QoS")
        cflags |= 0x04 | (p.will_qos << 3) | (0x20 if p.will_retain else 0)
        parts.append(_string(p.will_topic, "will topic"))
        parts.append(_binary(p.will_message, "will message"))
    elif p.will_message is not None or p.will_qos or p.will_retain:
        raise ValueError("will message, QoS or retain given without will_topic")
    if p.username is not None:
        cflags |= 0x80
        parts.append(_string(p.username, "username"))
    if p.password is not None:
        if p.username is None:
            raise ValueError("password given without username")
        cflags |= 0x40
        parts.append(_binary(p.password, "password"))
    if not 0 <= p.keep_alive <= 0xFFFF:
        raise ValueError(f"keep_alive {p.keep_alive} is not in 0..65535")
    if not 0 <= p.protocol_level <= 0xFF:
        raise ValueError(f"protocol_level {p.protocol_level} is not a byte")
    variable = _string(p.protocol_name, "protocol name") + bytes(
        (p.protocol_level, cflags, p.keep_alive >> 8, p.keep_alive & 0xFF)
    )
    return _packet(CONNECT << 4, variable, *parts)


def _encode_connack(p: Connack) -> bytes:
    if not 0 <= p.return_code <= 0xFF:
        raise ValueError(f"return code {p.return_code} is not a byte")
    if p.session_present and p.return_code:
        raise ValueError("session_present on a refused CONNACK")
    return bytes((CONNACK << 4, 2, 1 if p.session_present else 0, p.return_code))


def _encode_publish(p: Publish) -> bytes:
    _check_qos(p.qos, "QoS")
    if not p.topic:
        raise ValueError("empty PUBLISH topic")
    if "+" in p.topic or "#" in p.topic:
        raise ValueError("wildcard in PUBLISH topic")
    if p.qos == 0:
        if p.packet_id is not None:
            raise ValueError("packet identifier on a QoS 0 PUBLISH")
        if p.dup:
            raise ValueError("DUP on a QoS 0 PUBLISH")
        pid = b""
    else:
        pid = _packet_id(p.packet_id)
    first = (PUBLISH << 4) | (0x08 if p.dup else 0) | (p.qos << 1) | (1 if p.retain else 0)
    return _packet(first, _string(p.topic, "topic"), pid, p.payload)


def encode_publish(
    topic_bytes: bytes, payload: bytes, qos: int = 0, packet_id: int | None = None
) -> bytes:
    """Build a PUBLISH (retain 0, DUP 0) from an already validated topic.

    The forwarding fast path: the topic is the UTF-8 bytes of a topic that
    was parsed or checked before, so it is not checked again.
    """
    return encode_publish_head(topic_bytes, len(payload), qos, packet_id) + payload


def encode_publish_head(topic_bytes: bytes, payload_length: int, qos: int = 0, packet_id: int | None = None) -> bytes:
    """What :func:`encode_publish` puts before the payload, for a sender that
    writes the two as they are rather than copy a large payload behind it."""
    if qos:
        if packet_id is None or not 0 < packet_id <= 0xFFFF:
            raise ValueError(f"packet identifier {packet_id!r} is not in 1..65535")
        tail = packet_id.to_bytes(2, "big")
        length = len(topic_bytes) + payload_length + 4
    else:
        tail = b""
        length = len(topic_bytes) + payload_length + 2
    return b"".join(
        (
            bytes(((PUBLISH << 4) | (qos << 1),)),
            encode_remaining_length(length),
            len(topic_bytes).to_bytes(2, "big"),
            topic_bytes,
            tail,
        )
    )


def _encode_puback(p: Puback) -> bytes:
    return bytes((PUBACK << 4, 2)) + _packet_id(p.packet_id)


def _encode_subscribe(p: Subscribe) -> bytes:
    if not p.topics:
        raise ValueError("SUBSCRIBE without topic filters")
    parts = [_packet_id(p.packet_id)]
    for topic, qos in p.topics:
        if not topic:
            raise ValueError("empty topic filter")
        _check_qos(qos, "requested QoS")
        parts.append(_string(topic, "topic filter"))
        parts.append(bytes((qos,)))
    return _packet((SUBSCRIBE << 4) | 0b0010, *parts)


def _encode_suback(p: Suback) -> bytes:
    if not p.return_codes:
        raise ValueError("SUBACK without return codes")
    for code in p.return_codes:
        if code not in (0, 1, 2, SUBACK_FAILURE):
            raise ValueError(f"invalid SUBACK return code {code!r}")
    return _packet(SUBACK << 4, _packet_id(p.packet_id), bytes(p.return_codes))


def _encode_unsubscribe(p: Unsubscribe) -> bytes:
    if not p.topics:
        raise ValueError("UNSUBSCRIBE without topic filters")
    parts = [_packet_id(p.packet_id)]
    for topic in p.topics:
        if not topic:
            raise ValueError("empty topic filter")
        parts.append(_string(topic, "topic filter"))
    return _packet((UNSUBSCRIBE << 4) | 0b0010, *parts)


def _encode_unsuback(p: Unsuback) -> bytes:
    return bytes((UNSUBACK << 4, 2)) + _packet_id(p.packet_id)


_PINGREQ_BYTES = bytes((PINGREQ << 4, 0))
_PINGRESP_BYTES = bytes((PINGRESP << 4, 0))
_DISCONNECT_BYTES = bytes((DISCONNECT << 4, 0))

_ENCODERS: dict[type, Callable[..., bytes]] = {
    Connect: _encode_connect,
    Connack: _encode_connack,
    Publish: _encode_publish,
    Puback: _encode_puback,
    Subscribe: _encode_subscribe,
    Suback: _encode_suback,
    Unsubscribe: _encode_unsubscribe,
    Unsuback: _encode_unsuback,
    Pingreq: lambda p: _PINGREQ_BYTES,
    Pingresp: lambda p: _PINGRESP_BYTES,
    Disconnect: lambda p: _DISCONNECT_BYTES,
}


def encode(packet: Packet) -> bytes:
    """The wire bytes of `packet`. Raises ValueError if it cannot be encoded
    as valid MQTT 3.1.1 (a value out of range, a field the parser would
    refuse)."""
    try:
        encoder = _ENCODERS[type(packet)]
    except KeyError:
        raise TypeError(f"not an MQTT packet: {packet!r}") from None
    return encoder(packet)
