"""Tests for linchpin_gateway.wire, the sans-IO MQTT 3.1.1 codec.

Reference bytes are written out by hand from the MQTT 3.1.1 specification's
examples and from what paho-mqtt 2.x puts on the wire, so the tests check
the codec against the standard rather than against itself.
"""

from __future__ import annotations

import dataclasses
import re
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linchpin_common.contract import wire
from linchpin_common.contract.wire import (
    Connack,
    Connect,
    Disconnect,
    PacketTooLarge,
    Parser,
    Pingreq,
    Pingresp,
    ProtocolError,
    Puback,
    Publish,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    encode,
    encode_publish,
    encode_remaining_length,
)

MiB = 1024 * 1024
DEVICE = "0123456789abcdef0123456789abcdef"


def short(first: int, body: bytes) -> bytes:
    """A packet with a one-byte remaining length (bodies under 128 bytes)."""
    assert len(body) < 128
    return bytes((first, len(body))) + body


def feed_chunks(parser: Parser, data: bytes, cuts) -> list:
    """Feed `data` split at the offsets in `cuts`; return all packets."""
    packets = []
    bounds = [0, *sorted(cuts), len(data)]
    for start, stop in zip(bounds, bounds[1:]):
        packets += parser.feed(data[start:stop])
    return packets


def outcome(data: bytes, cuts, cap: int = wire.DEFAULT_MAX_REMAINING_LENGTH):
    """(packets, error message or None) for `data` fed in chunks.

    Packets completed in the failing feed() come from ProtocolError.packets,
    so the outcome must not depend on where the stream was cut.
    """
    parser = Parser(cap)
    packets: list = []
    bounds = [0, *sorted(cuts), len(data)]
    for start, stop in zip(bounds, bounds[1:]):
        try:
            packets += parser.feed(data[start:stop])
        except ProtocolError as exc:
            return packets + exc.packets, str(exc)
        assert parser.buffered <= 5 + cap
    return packets, None


# ---------------------------------------------------------------------------
# Exact bytes, both directions

EXAMPLES = [
    pytest.param(
        # paho-mqtt 2.x, MQTTv311, client_id="", keepalive=60.
        Connect(client_id="", username=None, password=None, keep_alive=60, clean_session=True),
        b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00",
        id="connect-paho-minimal",
    ),
    pytest.param(
        # paho-mqtt 2.x with username_pw_set and will_set(qos=1, retain=True).
        # Flags 0xEE: username, password, will retain, will QoS 1, will, clean.
        Connect(
            client_id="paho-client",
            username=DEVICE,
            password=b"pw",
            keep_alive=60,
            clean_session=True,
            will_topic="devices/x/up",
            will_message=b"bye",
            will_qos=1,
            will_retain=True,
        ),
        b"\x10\x50\x00\x04MQTT\x04\xee\x00\x3c"
        b"\x00\x0bpaho-client"
        b"\x00\x0cdevices/x/up\x00\x03bye"
        b"\x00\x20" + DEVICE.encode() + b"\x00\x02pw",
        id="connect-paho-will-credentials",
    ),
    pytest.param(
        # Spec figure 3.6: protocol name, level 4, flags 0xCE (username,
        # password, will QoS 1, will, clean session), keep alive 10.
        Connect(
            client_id="c",
            username="u",
            password=b"p",
            keep_alive=10,
            clean_session=True,
            will_topic="w",
            will_message=b"m",
            will_qos=1,
        ),
        b"\x10\x19\x00\x04MQTT\x04\xce\x00\x0a"
        b"\x00\x01c\x00\x01w\x00\x01m\x00\x01u\x00\x01p",
        id="connect-spec-3.6",
    ),
    pytest.param(
        # MQTT 3.1: protocol name "MQIsdp", level 3, CleanSession 0.
        Connect(
            client_id="a",
            username=None,
            password=None,
            keep_alive=0,
            clean_session=False,
            protocol_name="MQIsdp",
            protocol_level=3,
        ),
        b"\x10\x0f\x00\x06MQIsdp\x03\x00\x00\x00\x00\x01a",
        id="connect-mqtt31",
    ),
    pytest.param(Connack(0), b"\x20\x02\x00\x00", id="connack-accepted"),
    pytest.param(Connack(0, session_present=True), b"\x20\x02\x01\x00", id="connack-present"),
    pytest.param(Connack(wire.CONNACK_BAD_CREDENTIALS), b"\x20\x02\x00\x04", id="connack-4"),
    pytest.param(
        # Spec figure 3.11 variable header: topic "a/b", packet id 10.
        Publish("a/b", b"hi", qos=1, packet_id=10),
        b"\x32\x09\x00\x03a/b\x00\x0ahi",
        id="publish-qos1-spec-3.11",
    ),
    pytest.param(Publish("a/b", b"hi"), b"\x30\x07\x00\x03a/bhi", id="publish-qos0"),
    pytest.param(Publish("a/b", b""), b"\x30\x05\x00\x03a/b", id="publish-empty-payload"),
    pytest.param(
        # 0x3D: DUP, QoS 2, RETAIN.
        Publish("a/b", b"x", qos=2, packet_id=0xFFFF, retain=True, dup=True),
        b"\x3d\x08\x00\x03a/b\xff\xffx",
        id="publish-qos2-dup-retain",
    ),
    pytest.param(
        # Spec 1.5.3.1: "A\U0002A6D4" is 41 F0 AA 9B 94.
        Publish("A\U0002a6d4", b""),
        b"\x30\x07\x00\x05\x41\xf0\xaa\x9b\x94",
        id="publish-utf8-spec-1.5.3.1",
    ),
    pytest.param(Puback(10), b"\x40\x02\x00\x0a", id="puback"),
    pytest.param(
        # Spec figure 3.21/3.22: packet id 10, "a/b" QoS 1, "c/d" QoS 2.
        Subscribe(10, (("a/b", 1), ("c/d", 2))),
        b"\x82\x0e\x00\x0a\x00\x03a/b\x01\x00\x03c/d\x02",
        id="subscribe-spec",
    ),
    pytest.param(
        # paho-mqtt 2.x subscribe([("devices/+/up", 1), ("$gateway/events", 0)]).
        Subscribe(1, (("devices/+/up", 1), ("$gateway/events", 0))),
        b"\x82\x23\x00\x01\x00\x0cdevices/+/up\x01\x00\x0f$gateway/events\x00",
        id="subscribe-paho",
    ),
    pytest.param(
        # Spec figure 3.26: granted QoS 0, granted QoS 2, failure.
        Suback(10, (0, 2, wire.SUBACK_FAILURE)),
        b"\x90\x05\x00\x0a\x00\x02\x80",
        id="suback-spec",
    ),
    pytest.param(
        # Spec figure 3.30/3.31: packet id 10, "a/b", "c/d".
        Unsubscribe(10, ("a/b", "c/d")),
        b"\xa2\x0c\x00\x0a\x00\x03a/b\x00\x03c/d",
        id="unsubscribe-spec",
    ),
    pytest.param(Unsuback(10), b"\xb0\x02\x00\x0a", id="unsuback"),
    pytest.param(Pingreq(), b"\xc0\x00", id="pingreq"),
    pytest.param(Pingresp(), b"\xd0\x00", id="pingresp"),
    pytest.param(Disconnect(), b"\xe0\x00", id="disconnect"),
]

# All the examples back to back: one stream with every packet type.
STREAM_PACKETS = [p.values[0] for p in EXAMPLES]
STREAM = b"".join(p.values[1] for p in EXAMPLES)


@pytest.mark.parametrize("packet, data", EXAMPLES)
def test_encode_exact_bytes(packet, data):
    assert encode(packet) == data


@pytest.mark.parametrize("packet, data", EXAMPLES)
def test_parse_exact_bytes(packet, data):
    parser = Parser()
    assert parser.feed(data) == [packet]
    assert parser.buffered == 0


@pytest.mark.parametrize(
    "n, data",
    [
        # Spec table 2.4: the bounds of each length of the varint.
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_encoding(n, data):
    assert encode_remaining_length(n) == data
    if n:
        # The parser reads the same header, then waits for the body.
        parser = Parser(wire.MAX_REMAINING_LENGTH)
        assert parser.feed(b"\x30" + data) == []
        assert parser.buffered == 1 + len(data)


@pytest.mark.parametrize("n", [-1, 268_435_456])
def test_remaining_length_out_of_range(n):
    with pytest.raises(ValueError):
        encode_remaining_length(n)


def test_non_minimal_remaining_length_is_accepted():
    # 0x80 0x00 is a two-byte encoding of 0; 0x85 0x80 0x00 of 5.
    assert Parser().feed(b"\xc0\x80\x00") == [Pingreq()]
    assert Parser().feed(b"\x30\x85\x80\x00\x00\x03a/b") == [Publish("a/b", b"")]


def test_mqtt5_connect_gives_its_level_for_connack_1():
    # paho-mqtt 2.x MQTTv5 CONNECT with a Receive Maximum property: the
    # layout after the level byte differs, so only name and level are read.
    data = b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x03\x21\x00\x14\x00\x00"
    [packet] = Parser().feed(data)
    assert isinstance(packet, Connect)
    assert (packet.protocol_name, packet.protocol_level) == ("MQTT", 5)


def test_mqtt311_layout_with_other_name_level_pair():
    # Level 3 under the name "MQTT" parses fully; the session refuses it.
    data = short(0x10, b"\x00\x04MQTT\x03\x02\x00\x0a\x00\x01c")
    assert Parser().feed(data) == [
        Connect("c", None, None, 10, True, protocol_name="MQTT", protocol_level=3)
    ]


@pytest.mark.parametrize("qos, packet_id", [(0, None), (1, 1), (1, 0xFFFF), (2, 7)])
def test_encode_publish_fast_path_matches_encode(qos, packet_id):
    topic = f"devices/{DEVICE}/up"
    payload = b"\x00\x01" * 100
    expected = encode(Publish(topic, payload, qos=qos, packet_id=packet_id))
    assert encode_publish(topic.encode(), payload, qos, packet_id) == expected


@pytest.mark.parametrize("packet_id", [None, 0, 65536])
def test_encode_publish_needs_packet_id_for_qos1(packet_id):
    with pytest.raises(ValueError):
        encode_publish(b"a/b", b"", 1, packet_id)


def test_encode_publish_two_byte_remaining_length():
    data = encode_publish(b"t", b"x" * 200)
    assert data[:3] == b"\x30\xcb\x01"  # 203 = 0x4B | 0x80, 0x01
    assert Parser().feed(data) == [Publish("t", b"x" * 200)]


def test_parsed_publish_is_a_proper_frozen_publish():
    # The parser builds Publish through its slots; it must be the real thing.
    [packet] = Parser().feed(b"\x33\x08\x00\x03a/b\x00\x07x")
    expected = Publish("a/b", b"x", qos=1, packet_id=7, retain=True)
    assert packet == expected and hash(packet) == hash(expected)
    assert repr(packet) == repr(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        packet.topic = "c/d"  # type: ignore[misc]


def test_feed_accepts_bytearray_and_memoryview():
    assert Parser().feed(bytearray(b"\xc0\x00")) == [Pingreq()]
    assert Parser().feed(memoryview(b"\xd0\x00")) == [Pingresp()]
    assert Parser().feed(b"") == []


@pytest.mark.parametrize(
    "packet",
    [
        Publish("", b""),
        Publish("a/+", b""),
        Publish("a/#", b""),
        Publish("a\x00b", b""),
        Publish("\ud800", b""),
        Publish("a" * 65536, b""),
        Publish("a", b"", qos=3),
        Publish("a", b"", qos=1),
        Publish("a", b"", qos=1, packet_id=0),
        Publish("a", b"", qos=1, packet_id=65536),
        Publish("a", b"", packet_id=1),
        Publish("a", b"", dup=True),
        Puback(0),
        Puback(65536),
        Unsuback(0),
        Subscribe(1, ()),
        Subscribe(1, (("a", 3),)),
        Subscribe(1, (("", 0),)),
        Subscribe(0, (("a", 0),)),
        Suback(1, ()),
        Suback(1, (3,)),
        Unsubscribe(1, ()),
        Unsubscribe(1, ("",)),
        Connect("c", None, b"p", 0, True),
        Connect("c", None, None, 65536, True),
        Connect("c", None, None, 0, True, will_topic="w", will_message=b"m", will_qos=3),
        Connect("c", None, None, 0, True, will_message=b"m"),
        Connect("c", None, None, 0, True, will_retain=True),
        Connect("c", None, None, 0, True, will_topic="w"),
        Connack(256),
        Connack(5, session_present=True),
    ],
    ids=repr,
)
def test_encode_refuses_invalid_values(packet):
    with pytest.raises(ValueError):
        encode(packet)


def test_encode_refuses_non_packets():
    with pytest.raises(TypeError):
        encode(object())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Malformed input

MALFORMED = [
    # Packet types the gateway does not speak.
    (b"\x00\x00", "unsupported packet type 0"),
    (b"\xf0\x00", "unsupported packet type 15"),
    (b"\x50\x02\x00\x01", "unsupported packet type 5"),  # PUBREC
    (b"\x62\x02\x00\x01", "unsupported packet type 6"),  # PUBREL
    (b"\x70\x02\x00\x01", "unsupported packet type 7"),  # PUBCOMP
    # Fixed-header flags.
    (short(0x80, b"\x00\x01\x00\x01a\x00"), "reserved flags set on SUBSCRIBE"),
    (short(0x83, b"\x00\x01\x00\x01a\x00"), "reserved flags set on SUBSCRIBE"),
    (short(0xA0, b"\x00\x01\x00\x01a"), "reserved flags set on UNSUBSCRIBE"),
    (b"\xc1\x00", "reserved flags set on PINGREQ"),
    (b"\xe8\x00", "reserved flags set on DISCONNECT"),
    (b"\x42\x02\x00\x01", "reserved flags set on PUBACK"),
    (b"\x22\x02\x00\x00", "reserved flags set on CONNACK"),
    (short(0x12, b"\x00\x04MQTT\x04\x02\x00\x00\x00\x00"), "reserved flags set on CONNECT"),
    (short(0x36, b"\x00\x03a/b\x00\x01"), "QoS 3"),
    (short(0x38, b"\x00\x03a/b"), "DUP flag set on QoS 0"),
    # Remaining length.
    (b"\x30\xff\xff\xff\xff\x01", "remaining length field longer than 4 bytes"),
    (b"\x30\x80\x80\x80\x80", "remaining length field longer than 4 bytes"),
    # Packet identifier 0.
    (short(0x32, b"\x00\x03a/b\x00\x00"), "packet identifier 0 in PUBLISH"),
    (b"\x40\x02\x00\x00", "packet identifier 0 in PUBACK"),
    (short(0x82, b"\x00\x00\x00\x01a\x00"), "packet identifier 0 in SUBSCRIBE"),
    (short(0x90, b"\x00\x00\x00"), "packet identifier 0 in SUBACK"),
    (short(0xA2, b"\x00\x00\x00\x01a"), "packet identifier 0 in UNSUBSCRIBE"),
    (b"\xb0\x02\x00\x00", "packet identifier 0 in UNSUBACK"),
    # Strings (MQTT 1.5.3): invalid UTF-8, surrogates, overlong forms, U+0000.
    (short(0x30, b"\x00\x03a\xffb"), "invalid UTF-8 in topic"),
    (short(0x30, b"\x00\x03\xed\xa0\x80"), "invalid UTF-8 in topic"),
    (short(0x30, b"\x00\x02\xc0\xaf"), "invalid UTF-8 in topic"),
    (short(0x30, b"\x00\x03a\x00b"), "U+0000 in topic"),
    (short(0x82, b"\x00\x01\x00\x01\xff\x00"), "invalid UTF-8 in topic filter"),
    (short(0xA2, b"\x00\x01\x00\x01\x00"), "U+0000 in topic filter"),
    # PUBLISH topic and body.
    (short(0x30, b"\x00\x00"), "empty topic in PUBLISH"),
    (short(0x30, b"\x00\x03a/+"), "wildcard in PUBLISH topic"),
    (short(0x30, b"\x00\x03a/#"), "wildcard in PUBLISH topic"),
    (short(0x30, b"\x00\x05a/b"), "truncated topic in PUBLISH"),
    (short(0x30, b"\x00"), "truncated topic in PUBLISH"),
    (short(0x32, b"\x00\x03a/b\x00"), "truncated PUBLISH"),
    # SUBSCRIBE / UNSUBSCRIBE payloads.
    (short(0x82, b"\x00\x01"), "SUBSCRIBE without topic filters"),
    (short(0x82, b"\x00\x01\x00\x01a\x03"), "invalid requested QoS byte 0x03"),
    (short(0x82, b"\x00\x01\x00\x01a\x41"), "invalid requested QoS byte 0x41"),
    (short(0x82, b"\x00\x01\x00\x01a"), "truncated SUBSCRIBE"),
    (short(0x82, b"\x00\x01\x00\x00\x00"), "empty topic filter in SUBSCRIBE"),
    (short(0x82, b"\x00\x01\x00\x05a\x00"), "truncated topic filter"),
    (short(0xA2, b"\x00\x01"), "UNSUBSCRIBE without topic filters"),
    (short(0xA2, b"\x00\x01\x00\x00"), "empty topic filter in UNSUBSCRIBE"),
    (short(0xA2, b"\x00"), "truncated UNSUBSCRIBE"),
    # CONNECT.
    (short(0x10, b"\x00\x04MQTX\x04\x02\x00\x00\x00\x00"), "unknown protocol name 'MQTX'"),
    (short(0x10, b"\x00\x04mqtt\x04\x02\x00\x00\x00\x00"), "unknown protocol name 'mqtt'"),
    (short(0x10, b"\x00\x04MQTT\x04\x03\x00\x00\x00\x00"), "reserved flag set in CONNECT"),
    (
        short(0x10, b"\x00\x04MQTT\x04\x42\x00\x00\x00\x00\x00\x01p"),
        "password flag set without username flag",
    ),
    (short(0x10, b"\x00\x04MQTT\x04\x1e\x00\x00\x00\x00\x00\x01w\x00\x00"), "invalid will QoS 3"),
    (short(0x10, b"\x00\x04MQTT\x04\x0a\x00\x00\x00\x00"), "without will flag"),
    (short(0x10, b"\x00\x04MQTT\x04\x22\x00\x00\x00\x00"), "without will flag"),
    (short(0x10, b"\x00\x04MQTT\x04\x02\x00\x00\x00\x00\x00"), "trailing bytes in CONNECT"),
    (short(0x10, b"\x00\x04MQTT\x04\x02\x00\x00"), "truncated client identifier"),
    (short(0x10, b"\x00\x04MQTT\x04\x02"), "truncated CONNECT"),
    (short(0x10, b"\x00\x04MQTT"), "truncated CONNECT"),
    (short(0x10, b"\x00\x04MQ"), "truncated protocol name"),
    (short(0x10, b"\x00\x04MQTT\x04\x82\x00\x00\x00\x00\x00\x01\xff"), "invalid UTF-8 in username"),
    (short(0x10, b"\x00\x04MQTT\x04\x82\x00\x00\x00\x00\x00\x05u"), "truncated username"),
    (short(0x10, b"\x00\x04MQTT\x04\xc2\x00\x00\x00\x00\x00\x01u\x00\x05"), "truncated password"),
    (short(0x10, b"\x00\x04MQTT\x04\x06\x00\x00\x00\x00\x00\x01w"), "truncated will message"),
    # Bodies of fixed size: too long or too short.
    (b"\xc0\x02\x00\x00", "trailing bytes in PINGREQ"),
    (b"\xd0\x01\x00", "trailing bytes in PINGRESP"),
    (b"\xe0\x01\x00", "trailing bytes in DISCONNECT"),
    (b"\x40\x03\x00\x01\x00", "trailing bytes in PUBACK"),
    (b"\x40\x01\x01", "truncated PUBACK"),
    (b"\xb0\x03\x00\x01\x00", "trailing bytes in UNSUBACK"),
    (b"\x20\x03\x00\x00\x00", "trailing bytes in CONNACK"),
    (b"\x20\x00", "truncated CONNACK"),
    # CONNACK and SUBACK contents.
    (b"\x20\x02\x02\x00", "reserved bits set in CONNACK acknowledge flags"),
    (b"\x20\x02\x01\x05", "session present set on refused CONNACK"),
    (short(0x90, b"\x00\x01\x03"), "invalid SUBACK return code 0x03"),
    (short(0x90, b"\x00\x01\x81"), "invalid SUBACK return code 0x81"),
    (short(0x90, b"\x00\x01"), "SUBACK without return codes"),
]


@pytest.mark.parametrize("data, reason", MALFORMED, ids=[r for _, r in MALFORMED])
def test_malformed_input(data, reason):
    parser = Parser()
    with pytest.raises(ProtocolError, match=re.escape(reason)) as whole:
        parser.feed(data)
    # The parser is dead: the same error again, even for valid input.
    with pytest.raises(ProtocolError) as again:
        parser.feed(b"\xc0\x00")
    assert type(again.value) is type(whole.value)
    assert str(again.value) == str(whole.value)
    # Byte by byte, the same error.
    assert outcome(data, range(1, len(data))) == ([], str(whole.value))


@pytest.mark.parametrize(
    "data",
    [b"\x62", b"\x00", b"\xc1", b"\x36", b"\x38", b"\x30\x80\x80\x80\x80", b"\xc0\x02", b"\x40\x01"],
)
def test_header_errors_are_raised_before_any_body(data):
    with pytest.raises(ProtocolError):
        Parser().feed(data)


def test_packets_before_an_error_are_reported_with_it():
    parser = Parser()
    with pytest.raises(ProtocolError) as exc:
        parser.feed(b"\xc0\x00\xd0\x00\x50\x02\x00\x01")
    assert exc.value.packets == [Pingreq(), Pingresp()]
    with pytest.raises(ProtocolError) as again:
        parser.feed(b"")
    assert again.value.packets == []


# ---------------------------------------------------------------------------
# The packet size cap


def test_too_large_is_refused_on_the_fixed_header():
    parser = Parser()
    with pytest.raises(PacketTooLarge, match="remaining length exceeds 1048576 bytes"):
        parser.feed(b"\x30" + encode_remaining_length(2 * MiB))
    assert parser.buffered == 0
    with pytest.raises(PacketTooLarge):
        parser.feed(b"\x00" * 100)
    assert parser.buffered == 0


def test_too_large_split_header_buffers_only_the_header():
    parser = Parser()
    for byte in b"\x30\x80\x80\x80":
        assert parser.feed(bytes((byte,))) == []
        assert parser.buffered <= 4
    with pytest.raises(PacketTooLarge):
        parser.feed(b"\x01" + b"\x00" * 4096)  # 2 MiB announced, body follows
    assert parser.buffered == 0


def test_too_large_is_a_protocol_error():
    assert issubclass(PacketTooLarge, ProtocolError)
    with pytest.raises(ProtocolError):
        Parser(100).feed(b"\x30\x65")  # 101


def test_packet_at_the_cap_is_accepted():
    # remaining length = 2 + len("t") + payload = exactly 1 MiB.
    packet = Publish("t", b"\xab" * (MiB - 3))
    data = encode(packet)
    assert data[:4] == b"\x30\x80\x80\x40"
    assert Parser().feed(data) == [packet]
    parser = Parser()
    packets = []
    for start in range(0, len(data), 65536):
        packets += parser.feed(data[start : start + 65536])
        assert parser.buffered <= 4 + MiB
    assert packets == [packet]


def test_small_cap():
    parser = Parser(max_remaining_length=10)
    assert parser.feed(short(0x30, b"\x00\x01t" + b"x" * 7)) == [Publish("t", b"x" * 7)]
    with pytest.raises(PacketTooLarge, match="exceeds 10 bytes"):
        parser.feed(b"\x30\x0b")


@pytest.mark.parametrize("cap", [-1, wire.MAX_REMAINING_LENGTH + 1])
def test_cap_out_of_range(cap):
    with pytest.raises(ValueError):
        Parser(cap)


def test_one_chunk_payload_is_copied_once():
    data = encode(Publish("t", b"\x01" * (4 * MiB)))
    parser = Parser(8 * MiB)
    tracemalloc.start()
    try:
        [packet] = parser.feed(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(packet.payload) == 4 * MiB
    assert peak < 5 * MiB  # one copy of the payload, not two


def test_large_packet_in_small_chunks():
    # 1 MiB in 256-byte pieces: 4096 feeds, linear work, bounded buffer.
    packet = Publish("a/b", bytes(range(256)) * 4090, qos=1, packet_id=9)
    data = encode(packet)
    parser = Parser()
    packets = []
    for start in range(0, len(data), 256):
        packets += parser.feed(data[start : start + 256])
        assert parser.buffered <= min(start + 256, len(data))
    assert packets == [packet]
    assert parser.buffered == 0


# ---------------------------------------------------------------------------
# Splitting: a byte stream, not a message stream


def test_several_packets_in_one_chunk():
    assert Parser().feed(STREAM) == STREAM_PACKETS


def test_split_at_every_boundary():
    for cut in range(len(STREAM) + 1):
        parser = Parser()
        assert feed_chunks(parser, STREAM, [cut]) == STREAM_PACKETS, cut
        assert parser.buffered == 0


def test_byte_by_byte():
    parser = Parser()
    packets = []
    for i in range(len(STREAM)):
        packets += parser.feed(STREAM[i : i + 1])
        assert parser.buffered < 120
    assert packets == STREAM_PACKETS


def test_partial_packet_is_buffered():
    data = encode(Publish("a/b", b"x" * 50))
    parser = Parser()
    assert parser.feed(data[:30]) == []
    assert parser.buffered == 30
    assert parser.feed(data[30:] + b"\xc0") == [Publish("a/b", b"x" * 50)]
    assert parser.buffered == 1
    assert parser.feed(b"\x00") == [Pingreq()]
    assert parser.buffered == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=30))
def test_random_chunks(cuts):
    assert feed_chunks(Parser(), STREAM, cuts) == STREAM_PACKETS


# ---------------------------------------------------------------------------
# Properties over generated packets

mqtt_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
topic_names = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00+#"), min_size=1, max_size=12
)
topic_filters = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)
packet_ids = st.integers(1, 0xFFFF)
small_binary = st.binary(max_size=40)


@st.composite
def connects(draw):
    name, level = draw(st.sampled_from([("MQTT", 4), ("MQIsdp", 3)]))
    username = draw(st.none() | mqtt_text)
    password = None if username is None else draw(st.none() | small_binary)
    will = {}
    if draw(st.booleans()):
        will = dict(
            will_topic=draw(mqtt_text),
            will_message=draw(small_binary),
            will_qos=draw(st.integers(0, 2)),
            will_retain=draw(st.booleans()),
        )
    return Connect(
        client_id=draw(mqtt_text),
        username=username,
        password=password,
        keep_alive=draw(st.integers(0, 0xFFFF)),
        clean_session=draw(st.booleans()),
        protocol_name=name,
        protocol_level=level,
        **will,
    )


@st.composite
def publishes(draw):
    qos = draw(st.integers(0, 2))
    return Publish(
        topic=draw(topic_names),
        payload=draw(st.binary(max_size=300)),
        qos=qos,
        packet_id=draw(packet_ids) if qos else None,
        retain=draw(st.booleans()),
        dup=draw(st.booleans()) if qos else False,
    )


packets = st.one_of(
    connects(),
    st.integers(0, 255).flatmap(
        lambda code: st.builds(Connack, st.just(code), st.just(False) if code else st.booleans())
    ),
    publishes(),
    st.builds(Puback, packet_ids),
    st.builds(
        Subscribe,
        packet_ids,
        st.lists(st.tuples(topic_filters, st.integers(0, 2)), min_size=1, max_size=4).map(tuple),
    ),
    st.builds(
        Suback,
        packet_ids,
        st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1, max_size=6).map(tuple),
    ),
    st.builds(Unsubscribe, packet_ids, st.lists(topic_filters, min_size=1, max_size=4).map(tuple)),
    st.builds(Unsuback, packet_ids),
    st.just(Pingreq()),
    st.just(Pingresp()),
    st.just(Disconnect()),
)


@settings(max_examples=500, deadline=None)
@given(packets)
def test_round_trip(packet):
    parser = Parser()
    assert parser.feed(encode(packet)) == [packet]
    assert parser.buffered == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(packets, min_size=1, max_size=6), st.data())
def test_round_trip_stream_in_random_chunks(stream, data):
    raw = b"".join(map(encode, stream))
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=20))
    parser = Parser()
    assert feed_chunks(parser, raw, cuts) == stream
    assert parser.buffered == 0


# ---------------------------------------------------------------------------
# Robustness: arbitrary bytes give packets or ProtocolError, nothing else,
# and the outcome does not depend on how the stream was cut.


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.data())
def test_arbitrary_bytes(raw, data):
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=10))
    assert outcome(raw, cuts, cap=64) == outcome(raw, [], cap=64)


@settings(max_examples=400, deadline=None)
@given(st.lists(packets, min_size=1, max_size=4), st.data())
def test_mutated_valid_streams(stream, data):
    # Random bytes mostly fail on the first byte; damaging valid packets
    # reaches the body decoders.
    raw = bytearray(b"".join(map(encode, stream)))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        if action == "replace":
            raw[i] = data.draw(st.integers(0, 255))
        elif action == "insert":
            raw.insert(i, data.draw(st.integers(0, 255)))
        elif len(raw) > 1:
            del raw[i]
    raw = bytes(raw)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=10))
    assert outcome(raw, cuts) == outcome(raw, [])


def test_raw_kept_only_for_a_whole_input_qos0_publish_without_retain():
    packet = encode(Publish("devices/x/up", b"payload"))
    (p,) = Parser().feed(packet)
    assert p.raw is packet  # the very bytes received, no copy
    retained = encode(Publish("devices/x/up", b"payload", retain=True))
    assert Parser().feed(retained)[0].raw is None
    assert Parser().feed(encode(Publish("t", b"x", qos=1, packet_id=1)))[0].raw is None
    two = packet + packet
    assert [q.raw for q in Parser().feed(two)] == [None, None]
    split = Parser()
    split.feed(packet[:5])
    assert split.feed(packet[5:])[0].raw is None
