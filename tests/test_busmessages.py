"""The messages between gateway nodes (linchpin_gateway.busmessages): every
kind round-trips, and its bytes are pinned here (a change of them is a
change of the nodes' protocol, which docs/operations.md must say)."""

import pytest

from linchpin_gateway import busmessages as bm

D, C = "1" * 32, "c" * 32
RAW = bytes([0x30, 5, 0, 1]) + b"t\x00\xff"

VECTORS = [
    (bm.decode_principal, bm.UpRaw(RAW), b"u" + RAW),
    (bm.decode_principal, bm.DownRaw(C, RAW), b"d" + C.encode() + RAW),
    (bm.decode_principal, bm.Up(1, D, b"\x00payload"), b"U1" + D.encode() + b"\x00payload"),
    (bm.decode_principal, bm.Down(0, C, b""), b"D0" + C.encode()),
    (bm.decode_principal, bm.Takeover(42), b"T42"),
    (bm.decode_principal, bm.Event("device_connected", D, b"n1", 3),
     b'E{"e": "device_connected", "d": "' + D.encode() + b'", "n": "n1", "x": 3}'),
    (bm.decode_principal, bm.Present(D, b"n1", 4), b'P{"d": "' + D.encode() + b'", "n": "n1", "x": 4}'),
    (bm.decode_instance, bm.Connector(b"n2", "conn-a", 5, "r"), b'C{"n": "n2", "c": "conn-a", "x": 5, "s": "r"}'),
    (bm.decode_instance, bm.Connector(b"n2", "b", 6, "g"), b'C{"n": "n2", "c": "b", "x": 6, "s": "g"}'),
    (bm.decode_instance, bm.WhoIsHere(), b"W"),
    (bm.decode_control, bm.Heartbeat(b"n3"), b'{"op": "hb", "n": "n3"}'),
    (bm.decode_control, bm.Bye(b"n3"), b'{"op": "bye", "n": "n3"}'),
    (bm.decode_control, bm.Charge(b"n3", "rest", "192.0.2.1"),
     b'{"op": "charge", "l": "rest", "h": "192.0.2.1", "n": "n3"}'),
    (bm.decode_control, bm.Refund(b"n3", "login", "2001:db8::"),
     b'{"op": "refund", "l": "login", "h": "2001:db8::", "n": "n3"}'),
    (bm.decode_control, bm.Revoke(b"n3", C, D), b'{"op": "revoke", "i": "' + C.encode() + b'", "d": "' + D.encode()
     + b'", "n": "n3"}'),
    (bm.decode_control, bm.Drop(b"n3", C, (D,)), b'{"op": "drop", "i": "' + C.encode() + b'", "d": ["' + D.encode()
     + b'"], "n": "n3"}'),
    (bm.decode_control, bm.Forget(b"n3", C), b'{"op": "forget", "i": "' + C.encode() + b'", "n": "n3"}'),
]


@pytest.mark.parametrize("decode, message, wire", VECTORS, ids=lambda v: type(v).__name__)
def test_each_message_has_its_bytes_and_comes_back_whole(decode, message, wire):
    assert message.encode() == wire
    assert decode(wire) == message and type(decode(wire)) is type(message)


def test_every_message_kind_has_a_vector():
    kinds = {type(m) for _, m, _ in VECTORS}
    assert kinds == {bm.UpRaw, bm.DownRaw, bm.Up, bm.Down, bm.Takeover, bm.Event, bm.Present, bm.Connector,
                     bm.WhoIsHere, bm.Heartbeat, bm.Bye, bm.Charge, bm.Refund, bm.Revoke, bm.Drop, bm.Forget}


@pytest.mark.parametrize("decode, data", [
    (bm.decode_principal, b"X"), (bm.decode_principal, b"U7" + D.encode()), (bm.decode_instance, b"Q"),
    (bm.decode_instance, b'C{"n": "n2", "c": "a", "x": 1, "s": "z"}'),
    (bm.decode_control, b'{"op": "reboot", "n": "x"}'),
])
def test_bytes_no_node_sends_are_refused(decode, data):
    with pytest.raises(bm.BadMessage):
        decode(data)


def test_keys_and_channels():
    assert bm.principal_channel(D) == b"lm:p:" + D.encode() and bm.instance_channel(C) == b"lm:i:" + C.encode()
    assert (bm.own_key(D), bm.epoch_key(D), bm.connectors_key(C)) == (
        b"lm:own:" + D.encode(), b"lm:epoch:" + D.encode(), b"lm:conns:" + C.encode())
    assert bm.connector_key(C, "conn-a") == C + "/conn-a"
    said = bm.Connector(b"n2", "conn-a", 5, "d")
    assert said.entry() == b"n2 d 5" and bm.Connector.from_entry("conn-a", said.entry()) == said
    assert bm.node_key(b"n1") == b"lm:node:n1" and bm.budget_key("rest", "192.0.2.1") == b"lm:rl:rest:192.0.2.1"
