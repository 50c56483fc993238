"""Tests for linchpin_connector.e2e (PROTOCOL.md section 5).

The fixed-vector tests recompute every value straight from the PROTOCOL.md
formulas with raw primitives (an RFC 5869 HKDF written here on top of hmac,
AESGCM, X25519, hashlib) and also pin a few results as hex literals, so a
change on either side is caught.
"""

import hashlib
import hmac
import json
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import example, given, settings, strategies as st

from linchpin_common.contract import e2e
from linchpin_common.contract.e2e import (
    Accepted,
    Data,
    DeviceHandshake,
    HandshakeError,
    Hello,
    MessageError,
    Reject,
    Reset,
    Session,
    SessionGap,
    Welcome,
    accept_hello,
    b64u_decode,
    b64u_encode,
    decode_message,
    encode_message,
    handshake_key,
    make_reject,
    make_reset,
    parse_envelope,
)

# --- fixed inputs ------------------------------------------------------------

D = "0123456789abcdef0123456789abcdef"
K_SETUP = bytes(range(0x00, 0x20))
K_DEVICE = bytes(range(0x20, 0x40))
K_PENDING = bytes(range(0x40, 0x60))
S_C_PRIV = bytes.fromhex("a8" + "11" * 30 + "51")
E_D_PRIV = bytes.fromhex("b0" + "22" * 30 + "62")
E_C_PRIV = bytes.fromhex("c8" + "33" * 30 + "73")
HELLO_NONCE = bytes.fromhex("000102030405060708090a0b")
WELCOME_NONCE = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafb")
SESSION_ID = bytes.fromhex("5e5510a1d0000001")

# Pinned results (computed once from the formulas; see the vector tests).
PIN_K_HS_SETUP = "de66bd3304288514e5e9fb1160660004b0877de81bcdf2f94bddd048c18bca1d"
PIN_HELLO_SETUP = (
    "010100000102030405060708090a0b"                                    # 01 01 kk nonce
    "7b4b3ebd9b5845339b278e182320a6e31f22ebda7dc51af1a9d7c446be66b01b"  # E_d encrypted
    "0cd016ea37bcfc48d6b7f0dc1e8efe33"                                  # tag
)
PIN_K_UP_SETUP = "484d1e52c7c3fd35d8f71501c63c3a42c5572c53afa1b7fabc989eae33b76d1c"
PIN_DSK = "d7c59d320dcdd99355eb4ce88fcd3c04716e6421afa36d36b14c9c4490727eef"
PIN_K_DOWN_DEVICE = "2959567003f291c8d5897d89bb474e25e04398625b0e38fcceae7fb5de0c43c4"

# Small-order points of Curve25519 (all give an all-zero X25519 result).
LOW_ORDER_POINTS = [
    bytes(32),
    bytes([1]) + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


def priv(raw):
    return X25519PrivateKey.from_private_bytes(raw)


def pub_raw(private_raw):
    return priv(private_raw).public_key().public_bytes_raw()


# --- reference implementation straight from PROTOCOL.md ---------------------

def ref_hkdf(ikm, salt, info, length):
    """RFC 5869 HKDF-SHA256, written out."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def ref_x25519(private_raw, public_raw):
    return priv(private_raw).exchange(X25519PublicKey.from_public_bytes(public_raw))


def ref_handshake(K, key_kind):
    """Every value of one handshake under the fixed inputs, from the formulas."""
    d = D.encode("ascii")
    k_hs = ref_hkdf(K, bytes(32), b"lm-e2e v1 handshake" + d, 32)
    hello_head = bytes([0x01, 0x01, key_kind]) + HELLO_NONCE
    hello = hello_head + AESGCM(k_hs).encrypt(
        HELLO_NONCE, pub_raw(E_D_PRIV), hello_head + d + b"up")
    welcome_head = bytes([0x01, 0x02, key_kind]) + WELCOME_NONCE
    welcome = welcome_head + AESGCM(k_hs).encrypt(
        WELCOME_NONCE, pub_raw(E_C_PRIV) + SESSION_ID,
        welcome_head + d + b"down" + hashlib.sha256(hello).digest())
    ikm_device = (ref_x25519(E_D_PRIV, pub_raw(E_C_PRIV))
                  + ref_x25519(E_D_PRIV, pub_raw(S_C_PRIV)))
    ikm_connector = (ref_x25519(E_C_PRIV, pub_raw(E_D_PRIV))
                     + ref_x25519(S_C_PRIV, pub_raw(E_D_PRIV)))
    assert ikm_device == ikm_connector
    th = hashlib.sha256(hello + welcome).digest()
    okm = ref_hkdf(ikm_device, K, b"lm-e2e v1 session" + d + SESSION_ID + th, 64)
    dsk = None
    if key_kind == 0:
        dsk = ref_hkdf(ikm_device, K, b"lm-e2e v1 device secret" + d + th, 32)
    return {"k_hs": k_hs, "hello": hello, "welcome": welcome,
            "k_up": okm[:32], "k_down": okm[32:], "dsk": dsk}


def ref_data(key, seq, message, session_id=SESSION_ID):
    head = bytes([0x01, 0x03]) + session_id + seq.to_bytes(8, "big")
    return head + AESGCM(key).encrypt(bytes(4) + seq.to_bytes(8, "big"), message,
                                      head + D.encode("ascii"))


def fixed_handshake(K, key_kind, keys=None):
    """Run both sides with the fixed keys, nonces and session id."""
    device = DeviceHandshake.start(D, K, key_kind, pub_raw(S_C_PRIV),
                                   ephemeral_private=priv(E_D_PRIV), nonce=HELLO_NONCE)
    if keys is None:
        keys = [("k", key_kind, K)]
    accepted = accept_hello(device.hello, D, keys, priv(S_C_PRIV),
                            ephemeral_private=priv(E_C_PRIV), nonce=WELCOME_NONCE,
                            session_id=SESSION_ID)
    return device, accepted


def random_handshake(key_kind=1, K=K_DEVICE):
    s_c = X25519PrivateKey.generate()
    device = DeviceHandshake.start(D, K, key_kind, s_c.public_key().public_bytes_raw())
    accepted = accept_hello(device.hello, D, [("k", key_kind, K)], s_c)
    assert accepted is not None
    result = device.finish(accepted.welcome)
    assert result is not None
    return result.session, accepted.session


def flipped(data, bit):
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# --- reference self-check -----------------------------------------------------

def test_reference_hkdf_matches_rfc5869_case_1():
    okm = ref_hkdf(bytes([0x0b] * 22), bytes.fromhex("000102030405060708090a0b0c"),
                   bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"), 42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")


# --- base64url ----------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"", b"\x00", b"\xff\xfe", b"abc", bytes(range(256)), bytes(32)])
def test_b64u_round_trip(raw):
    text = b64u_encode(raw)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64u_decode(text) == raw


def test_b64u_lengths_of_protocol_values():
    assert len(b64u_encode(bytes(16))) == 22
    assert len(b64u_encode(bytes(32))) == 43


@pytest.mark.parametrize("bad", [
    "AA==", "AAA=", "AA=", "A", "AAAAA", "AA AA", "AA+A", "AA/A", "AA\nA", "é", "AB",
])
def test_b64u_decode_rejects(bad):
    # "AB" has non-zero unused bits (canonical form of b"\x00" is "AA").
    with pytest.raises(ValueError):
        b64u_decode(bad)


# --- fixed vectors -------------------------------------------------------------

def test_handshake_key_vector():
    expected = ref_hkdf(K_SETUP, bytes(32), b"lm-e2e v1 handshake" + D.encode(), 32)
    assert handshake_key(K_SETUP, D) == expected
    assert expected.hex() == PIN_K_HS_SETUP


@pytest.mark.parametrize("key_kind,K", [(0, K_SETUP), (1, K_DEVICE)])
def test_fixed_vector_handshake(key_kind, K):
    ref = ref_handshake(K, key_kind)
    device, accepted = fixed_handshake(K, key_kind)
    assert device.hello == ref["hello"] and len(device.hello) == 63
    assert accepted is not None
    assert accepted.label == "k"
    assert accepted.welcome == ref["welcome"] and len(accepted.welcome) == 71
    result = device.finish(accepted.welcome)
    assert result is not None
    d_sess, c_sess = result.session, accepted.session
    assert d_sess.session_id == c_sess.session_id == SESSION_ID
    assert d_sess.device_id == c_sess.device_id == D
    assert (d_sess.role, c_sess.role) == ("device", "connector")
    assert d_sess.send_key == c_sess.recv_key == ref["k_up"]
    assert d_sess.recv_key == c_sess.send_key == ref["k_down"]
    assert result.device_secret_key == accepted.device_secret_key == ref["dsk"]
    # First DATA each way is seq 0 and byte-identical to the reference.
    assert d_sess.seal(b"up0") == ref_data(ref["k_up"], 0, b"up0")
    assert c_sess.seal(b"down0") == ref_data(ref["k_down"], 0, b"down0")
    assert d_sess.seal(b"up1") == ref_data(ref["k_up"], 1, b"up1")


def test_fixed_vector_pins():
    ref0 = ref_handshake(K_SETUP, 0)
    assert ref0["k_hs"].hex() == PIN_K_HS_SETUP
    assert ref0["hello"].hex() == PIN_HELLO_SETUP
    assert ref0["k_up"].hex() == PIN_K_UP_SETUP
    assert ref0["dsk"].hex() == PIN_DSK
    ref1 = ref_handshake(K_DEVICE, 1)
    assert ref1["dsk"] is None
    assert ref1["k_down"].hex() == PIN_K_DOWN_DEVICE


# --- full handshake ----------------------------------------------------------------

@pytest.mark.parametrize("key_kind,K", [(0, K_SETUP), (1, K_DEVICE)])
def test_random_handshake_and_data_both_ways(key_kind, K):
    s_c = X25519PrivateKey.generate()
    device = DeviceHandshake.start(D, K, key_kind, s_c.public_key().public_bytes_raw())
    hello = parse_envelope(device.hello)
    assert isinstance(hello, Hello) and hello.key_kind == key_kind
    accepted = accept_hello(hello, D, [("k", key_kind, K)], s_c)
    assert isinstance(accepted, Accepted)
    welcome = parse_envelope(accepted.welcome)
    assert isinstance(welcome, Welcome) and welcome.key_kind == key_kind
    result = device.finish(welcome)
    assert result is not None
    if key_kind == 0:
        assert len(result.device_secret_key) == 32
        assert result.device_secret_key == accepted.device_secret_key
    else:
        assert result.device_secret_key is None and accepted.device_secret_key is None
    dev, con = result.session, accepted.session
    assert dev.send_key == con.recv_key and dev.recv_key == con.send_key
    assert dev.send_key != dev.recv_key
    assert not con.peer_confirmed

    confirm = encode_message({"t": "confirm"})
    env = dev.seal(confirm)
    parsed = parse_envelope(env)
    assert isinstance(parsed, Data) and parsed.seq == 0 and parsed.session_id == dev.session_id
    assert con.open(parsed) == confirm
    assert con.peer_confirmed
    assert decode_message(confirm) == ({"t": "confirm"}, b"")

    down = con.seal(encode_message({"t": "res", "id": 1, "status": 200, "headers": [],
                                    "end": True}, b"hello"))
    assert parse_envelope(down).seq == 0
    assert decode_message(dev.open(down)) == (
        {"t": "res", "id": 1, "status": 200, "headers": [], "end": True}, b"hello")
    for i in range(1, 5):
        env = dev.seal(b"m%d" % i)
        assert parse_envelope(env).seq == i
        assert con.open(env) == b"m%d" % i    # open() also takes bytes
    assert (dev.send_seq, con.recv_seq, con.send_seq, dev.recv_seq) == (5, 5, 1, 1)


def test_sessions_are_independent():
    d1, c1 = random_handshake()
    d2, c2 = random_handshake()
    assert d1.session_id != d2.session_id
    env = d1.seal(b"x")
    assert c2.open(env) is None          # other session id
    assert c1.open(env) == b"x"


def test_accept_picks_matching_key_and_label():
    keys = [("setup", 0, K_SETUP), ("device", 1, K_DEVICE), ("pending:3", 1, K_PENDING)]
    for K, kind, label in [(K_SETUP, 0, "setup"), (K_DEVICE, 1, "device"),
                           (K_PENDING, 1, "pending:3")]:
        device, accepted = fixed_handshake(K, kind, keys)
        assert accepted is not None and accepted.label == label
        assert device.finish(accepted.welcome) is not None
    # Unknown key: nothing opens it.
    device, accepted = fixed_handshake(bytes(32), 1, keys)
    assert accepted is None


def test_wrong_key_kind_is_not_tried():
    # The right K listed under the wrong kind does not open the HELLO.
    device, accepted = fixed_handshake(K_DEVICE, 1, [("x", 0, K_DEVICE)])
    assert accepted is None
    device, accepted = fixed_handshake(K_SETUP, 0, [("x", 1, K_SETUP)])
    assert accepted is None
    # A WELCOME with the other key_kind byte is dropped by the device.
    device, accepted = fixed_handshake(K_DEVICE, 1)
    other = bytearray(accepted.welcome)
    other[2] = 0
    assert device.finish(bytes(other)) is None
    assert device.finish(accepted.welcome) is not None


def test_key_kind_only_0_or_1_parsed():
    device, _ = fixed_handshake(K_DEVICE, 1)
    for kind in (2, 3, 0x80, 0xFF):
        bad = bytearray(device.hello)
        bad[2] = kind
        assert parse_envelope(bytes(bad)) is None
    with pytest.raises(ValueError):
        DeviceHandshake.start(D, K_DEVICE, 2, pub_raw(S_C_PRIV))


# --- tampering: every bit ---------------------------------------------------------

def test_every_flipped_bit_of_hello_is_rejected():
    device, _ = fixed_handshake(K_DEVICE, 1)
    keys = [("setup", 0, K_SETUP), ("device", 1, K_DEVICE)]
    s_c = priv(S_C_PRIV)
    assert accept_hello(device.hello, D, keys, s_c) is not None
    for bit in range(len(device.hello) * 8):
        assert accept_hello(flipped(device.hello, bit), D, keys, s_c) is None, bit


def test_every_flipped_bit_of_welcome_is_rejected():
    device, accepted = fixed_handshake(K_SETUP, 0)
    for bit in range(len(accepted.welcome) * 8):
        assert device.finish(flipped(accepted.welcome, bit)) is None, bit
    assert device.finish(accepted.welcome) is not None


def test_every_flipped_bit_of_data_is_rejected():
    dev, con = random_handshake()
    envs = [dev.seal(b"first message"), dev.seal(b"")]
    for env in envs:
        for bit in range(len(env) * 8):
            bad = flipped(env, bit)
            parsed = parse_envelope(bad)
            # A flipped seq bit gives a higher seq: must still only be dropped.
            assert parsed is None or con.open(parsed) is None, bit
        assert con.open(env) is not None
    assert con.recv_seq == 2


def test_hello_for_another_device_is_rejected():
    device, _ = fixed_handshake(K_DEVICE, 1)
    other = "f" * 32
    assert accept_hello(device.hello, other, [("d", 1, K_DEVICE)], priv(S_C_PRIV)) is None


# --- sequence rules ----------------------------------------------------------------

def test_replayed_data_is_dropped():
    dev, con = random_handshake()
    first = dev.seal(b"one")
    assert con.open(first) == b"one"
    assert con.open(first) is None
    assert con.recv_seq == 1
    second = dev.seal(b"two")
    assert con.open(second) == b"two"
    assert con.open(first) is None and con.open(second) is None


def test_authentic_gap_raises_session_gap():
    dev, con = random_handshake()
    dev.seal(b"lost")
    later = dev.seal(b"later")
    with pytest.raises(SessionGap) as info:
        con.open(later)
    assert (info.value.expected, info.value.received) == (0, 1)


def test_forged_higher_seq_is_dropped_not_a_gap():
    dev, con = random_handshake()
    env = dev.seal(b"payload")
    # Same ciphertext, seq rewritten to every higher value we try.
    for seq in (1, 2, 255, 2**63, 2**64 - 1):
        forged = env[:10] + seq.to_bytes(8, "big") + env[18:]
        assert con.open(forged) is None
    # Random ciphertext with a higher seq.
    junk = env[:10] + (7).to_bytes(8, "big") + bytes(40)
    assert con.open(parse_envelope(junk)) is None
    assert con.open(env) == b"payload"


def test_device_drops_its_own_direction():
    dev, con = random_handshake()
    up = dev.seal(b"up")
    assert dev.open(up) is None           # k_up is not the device's receive key
    down = con.seal(b"down")
    assert con.open(down) is None


# --- welcome binding ----------------------------------------------------------------

def test_welcome_for_another_hello_does_not_finish():
    s_c = X25519PrivateKey.generate()
    pub = s_c.public_key().public_bytes_raw()
    first = DeviceHandshake.start(D, K_DEVICE, 1, pub)
    second = DeviceHandshake.start(D, K_DEVICE, 1, pub)
    welcome1 = accept_hello(first.hello, D, [("d", 1, K_DEVICE)], s_c).welcome
    assert second.finish(welcome1) is None
    assert first.finish(welcome1) is not None
    # A handshake finishes once; a replayed WELCOME is dropped.
    assert first.finish(welcome1) is None


def test_finish_ignores_other_envelopes():
    device, accepted = fixed_handshake(K_DEVICE, 1)
    for other in (device.hello, make_reject(), make_reset(SESSION_ID), b"", b"\x01\x02"):
        assert device.finish(other) is None
    assert device.finish(accepted.welcome) is not None


# --- low-order points ----------------------------------------------------------------

@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_connector_static_key_aborts_start(point):
    with pytest.raises(HandshakeError):
        DeviceHandshake.start(D, K_DEVICE, 1, point)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_device_ephemeral_aborts_accept(point):
    k_hs = handshake_key(K_DEVICE, D)
    head = bytes([1, 1, 1]) + HELLO_NONCE
    hello = head + AESGCM(k_hs).encrypt(HELLO_NONCE, point, head + D.encode() + b"up")
    assert isinstance(parse_envelope(hello), Hello)
    assert accept_hello(hello, D, [("d", 1, K_DEVICE)], priv(S_C_PRIV)) is None


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_connector_ephemeral_aborts_finish(point):
    device, _ = fixed_handshake(K_DEVICE, 1)
    k_hs = handshake_key(K_DEVICE, D)
    head = bytes([1, 2, 1]) + WELCOME_NONCE
    welcome = head + AESGCM(k_hs).encrypt(
        WELCOME_NONCE, point + SESSION_ID,
        head + D.encode() + b"down" + hashlib.sha256(device.hello).digest())
    assert device.finish(welcome) is None


# --- local argument checks -----------------------------------------------------------

def test_bad_local_parameters_raise():
    pub = pub_raw(S_C_PRIV)
    with pytest.raises(ValueError):
        DeviceHandshake.start("ABCDEF0123456789ABCDEF0123456789", K_DEVICE, 1, pub)
    with pytest.raises(ValueError):
        DeviceHandshake.start(D, K_DEVICE[:16], 1, pub)
    with pytest.raises(ValueError):
        DeviceHandshake.start(D, K_DEVICE, 1, pub[:31])
    with pytest.raises(ValueError):
        DeviceHandshake.start(D, K_DEVICE, 1, pub, nonce=b"short")
    with pytest.raises(ValueError):
        handshake_key(K_DEVICE, "short")
    with pytest.raises(ValueError):
        make_reset(b"1234567")
    with pytest.raises(ValueError):
        Session(SESSION_ID, D, K_SETUP, K_DEVICE, role="gateway")


def test_reprs_hide_keys():
    dev, _ = random_handshake()
    assert dev.send_key.hex() not in repr(dev) and dev.recv_key.hex() not in repr(dev)
    device, accepted = fixed_handshake(K_SETUP, 0)
    result = device.finish(accepted.welcome)
    dsk = result.device_secret_key
    for obj in (result, accepted, device):
        assert dsk.hex() not in repr(obj) and repr(dsk) not in repr(obj)


# --- envelope parsing -------------------------------------------------------------------

def test_parse_each_type():
    device, accepted = fixed_handshake(K_SETUP, 0)
    hello = parse_envelope(device.hello)
    assert hello == Hello(0, HELLO_NONCE, device.hello[15:], device.hello)
    welcome = parse_envelope(accepted.welcome)
    assert welcome == Welcome(0, WELCOME_NONCE, accepted.welcome[15:], accepted.welcome)
    data = bytes([1, 3]) + SESSION_ID + (258).to_bytes(8, "big") + bytes(16)
    assert parse_envelope(data) == Data(SESSION_ID, 258, bytes(16), data)
    assert make_reset(SESSION_ID) == bytes([1, 4]) + SESSION_ID
    assert parse_envelope(make_reset(SESSION_ID)) == Reset(SESSION_ID)
    assert make_reject() == b"\x01\x05"
    assert parse_envelope(make_reject()) == Reject()
    assert parse_envelope(bytearray(make_reject())) == Reject()


@pytest.mark.parametrize("data", [
    b"", b"\x01", b"\x02\x05", b"\x00\x05", b"\x01\x00", b"\x01\x06", b"\x01\xff",
    b"\x01\x05\x00",                                    # REJECT too long
    bytes([1, 4]) + bytes(7), bytes([1, 4]) + bytes(9),  # RESET wrong length
    bytes([1, 3]) + bytes(31),                           # DATA too short
    bytes([1, 1, 0]) + bytes(59), bytes([1, 1, 0]) + bytes(61),
    bytes([1, 2, 0]) + bytes(67), bytes([1, 2, 0]) + bytes(69),
    bytes([2, 1, 0]) + bytes(60),                        # HELLO, wrong version
])
def test_parse_drops_malformed(data):
    assert parse_envelope(data) is None


def test_parse_non_bytes_is_none():
    for value in (None, "\x01\x05", 5, [1, 5]):
        assert parse_envelope(value) is None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120))
def test_parse_envelope_never_raises(data):
    env = parse_envelope(data)
    assert env is None or type(env) in (Hello, Welcome, Data, Reset, Reject)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([1, 2, 3, 4, 5, 6]), st.binary(max_size=100))
def test_parse_envelope_never_raises_on_v1_prefix(kind, rest):
    env = parse_envelope(bytes([1, kind]) + rest)
    if env is not None:
        assert type(env) in (Hello, Welcome, Data, Reset, Reject)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80))
def test_session_open_never_raises_on_garbage(tail):
    _, con = random_handshake_cached()
    env = bytes([1, 3]) + con.session_id + tail
    assert con.open(env) is None


_CACHED = []


def random_handshake_cached():
    if not _CACHED:
        _CACHED.append(random_handshake())
    return _CACHED[0]


# --- messages ---------------------------------------------------------------------------

def test_encode_message_format():
    msg = encode_message({"t": "body", "id": 3, "end": False}, b"\x00\xff")
    header = b'{"t":"body","id":3,"end":false}'
    assert msg == struct.pack(">I", len(header)) + header + b"\x00\xff"
    assert encode_message({"t": "confirm"}) == b"\x00\x00\x00\x0f" + b'{"t":"confirm"}'


@pytest.mark.parametrize("header,body", [
    ({"t": "confirm"}, b""),
    ({"t": "req", "id": 0, "method": "GET", "path": "/app/ü", "headers": [["a", "b"]],
      "end": True}, b""),
    ({"t": "req", "id": 2**53 - 1, "method": "POST", "path": "/", "headers": [],
      "end": False}, b"x" * e2e.MAX_BODY_CHUNK),
    ({"t": "res", "id": 1, "status": 204, "headers": [], "end": True}, b"\x00"),
    ({"t": "ack", "id": 1, "bytes": 10}, b""),
    ({"t": "err", "id": 1, "code": "busy", "message": "too many"}, b""),
    ({"t": "future-type", "x": None}, b""),
])
def test_message_round_trip(header, body):
    assert decode_message(encode_message(header, body)) == (header, body)


def test_header_exactly_64k_is_accepted():
    fill = e2e.MAX_HEADER - len(b'{"t":"ack","p":""}')
    header = {"t": "ack", "p": "a" * fill}
    msg = encode_message(header)
    assert struct.unpack(">I", msg[:4])[0] == e2e.MAX_HEADER
    assert decode_message(msg) == (header, b"")
    with pytest.raises(MessageError):
        encode_message({"t": "ack", "p": "a" * (fill + 1)})


def raw_message(header_bytes, body=b"", length=None):
    if length is None:
        length = len(header_bytes)
    return struct.pack(">I", length) + header_bytes + body


@pytest.mark.parametrize("data", [
    b"", b"\x00", b"\x00\x00\x00",                                     # short
    raw_message(b'{"t":"x"}', length=e2e.MAX_HEADER + 1),               # header_len > 64 KiB
    raw_message(b"{" + b" " * e2e.MAX_HEADER + b'"t":"a"}'),             # real header > 64 KiB
    raw_message(b'{"t":"x"}', length=10),                               # beyond data
    raw_message(b'{"t":"x"}', length=0xFFFFFFFF),
    raw_message(b""),                                                   # empty header
    raw_message(b'{"t":"\xff"}'),                                       # invalid UTF-8
    raw_message(b'{"t":"\xed\xa0\x80"}'),                               # UTF-8 surrogate
    raw_message(b'{"t":"x"'),                                           # invalid JSON
    raw_message(b'{"t":"x"} x'),
    raw_message(b"[1,2]"), raw_message(b'"t"'), raw_message(b"3"),      # not an object
    raw_message(b"null"),
    raw_message(b"{}"), raw_message(b'{"id":1}'),                       # no "t"
    raw_message(b'{"t":1}'), raw_message(b'{"t":null}'), raw_message(b'{"t":["req"]}'),
    raw_message(b'{"t":"confirm"}', b"x"),                              # body on confirm
    raw_message(b'{"t":"ack","id":1,"bytes":1}', b"x"),
    raw_message(b'{"t":"cancel","id":1}', b"x"),
    raw_message(b'{"t":"err","id":1}', b"x"),
    raw_message(b'{"t":"body","id":1,"end":true}', b"x" * (e2e.MAX_BODY_CHUNK + 1)),
    raw_message(b'{"t":"req","n":NaN}'),                                # not JSON
    raw_message(b'{"t":"req","n":Infinity}'),
    raw_message(b'{"t":"req","t":"res"}'),                              # duplicate key
    raw_message(b"\xef\xbb\xbf" + b'{"t":"req"}'),                      # BOM
    raw_message(b'{"t":"x","n":' + b"1" * 5000 + b"}"),                 # int too long
    raw_message(b'{"t":"x","n":' + b"[" * 30000 + b"]" * 30000 + b"}"),  # deep nesting
    raw_message(b"[" * 65536),
])
def test_decode_message_errors(data):
    with pytest.raises(MessageError):
        decode_message(data)


def test_message_error_is_value_error():
    assert issubclass(MessageError, ValueError)


@pytest.mark.parametrize("header,body", [
    ([], b""), ({}, b""), ({"t": 5}, b""),
    ({"t": "confirm"}, b"x"),
    ({"t": "body", "id": 1, "end": True}, b"x" * (e2e.MAX_BODY_CHUNK + 1)),
    ({"t": "x", "n": float("nan")}, b""),
    ({"t": "x", "o": object()}, b""),
    ({"t": "x", "s": "\ud800"}, b""),
    ({"t": "x"}, "text body"),
])
def test_encode_message_errors(header, body):
    with pytest.raises(MessageError):
        encode_message(header, body)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_decode_message_only_raises_message_error(data):
    try:
        header, body = decode_message(data)
    except MessageError:
        return
    assert isinstance(header, dict) and isinstance(header["t"], str)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120), st.binary(max_size=40))
@example(b'{"t": "cancel", "id": 1}', b"")  # random bytes are almost never a message: one that is
def test_decode_message_length_prefixed_garbage(header, body):
    try:
        got_header, got_body = decode_message(struct.pack(">I", len(header)) + header + body)
    except MessageError:
        return
    # what it accepts is what was framed: the header's JSON and the bytes after it
    assert got_header == json.loads(header) and isinstance(got_header["t"], str) and got_body == body


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5),
       st.sampled_from(["req", "res", "body", "ack", "confirm"]),
       st.binary(max_size=64))
def test_message_round_trip_property(extra, t, body):
    header = dict(extra, t=t)
    if t not in e2e.BODY_TYPES:
        body = b""
    msg = encode_message(header, body)
    assert decode_message(msg) == (header, body)
    json.loads(msg[4:4 + struct.unpack(">I", msg[:4])[0]].decode("utf-8"))


def test_constants():
    assert (e2e.KEY_SETUP, e2e.KEY_DEVICE) == (0, 1)
    assert (e2e.HELLO, e2e.WELCOME, e2e.DATA, e2e.RESET, e2e.REJECT) == (1, 2, 3, 4, 5)
    assert (e2e.MAX_HEADER, e2e.MAX_BODY_CHUNK, e2e.CREDIT_WINDOW, e2e.MAX_IN_FLIGHT) == (
        65536, 262144, 1048576, 64)


# --- sealing a message in parts ---------------------------------------------------------

@pytest.mark.parametrize("sizes", [(), (0,), (5,), (4, 0, 300), (20, 262144), (16, 15, 17, 1, 70000)])
def test_seal_parts_is_seal_of_the_joined_message(sizes):
    """seal_parts (the hot path: header and body encrypted where they lie)
    gives byte for byte what seal gives for the joined message, at the same
    seq, and the peer opens it."""
    parts = [bytes((i * 7 + j) % 251 for j in range(n)) for i, n in enumerate(sizes)]
    one = Session(SESSION_ID, D, K_SETUP, K_DEVICE, role="device", send_seq=41)
    other = Session(SESSION_ID, D, K_SETUP, K_DEVICE, role="device", send_seq=41)
    peer = Session(SESSION_ID, D, K_DEVICE, K_SETUP, role="connector", recv_seq=41)
    whole = one.seal(b"".join(parts))
    in_parts = other.seal_parts(*parts[:1], *(bytearray(p) for p in parts[1:2]), *(memoryview(p) for p in parts[2:]))
    assert bytes(in_parts) == whole and one.send_seq == other.send_seq == 42
    assert peer.open(bytes(in_parts)) == b"".join(parts)


def test_message_prefix_is_what_encode_message_puts_before_the_body():
    header = {"t": "body", "id": 3, "end": False, "note": "é"}
    assert encode_message(header, b"xyz") == e2e.message_prefix(header, b"xyz") + b"xyz"
    with pytest.raises(MessageError):
        e2e.message_prefix({"t": "ack", "id": 1, "bytes": 3}, b"a body on an ack")
    with pytest.raises(MessageError):
        e2e.message_prefix({"t": "body", "id": 1}, bytes(e2e.MAX_BODY_CHUNK + 1))
