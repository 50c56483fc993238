"""The E2E channel endpoint and credit windows shared by device and connector
(linchpin_common.contract.channel), with fixed vectors and properties."""

import pytest
from hypothesis import given, settings, strategies as st

from linchpin_common.contract import channel, e2e
from linchpin_common.contract.channel import (ACK_BATCH, AnsweredHellos, ChannelEndpoint, ChannelError, Outcome,
                                              ReceiveWindow, SendWindow)
from tests.test_e2e import D, ref_data, ref_handshake, fixed_handshake, K_DEVICE, K_SETUP


def pair_of_endpoints(key_kind=1, K=K_DEVICE):
    device, accepted = fixed_handshake(K, key_kind)
    result = device.finish(accepted.welcome)
    return ChannelEndpoint(result.session), ChannelEndpoint(accepted.session)


def test_fixed_vector_confirm_and_request():
    """The device's first two DATA, byte for byte from the PROTOCOL.md formulas."""
    ref = ref_handshake(K_SETUP, 0)
    dev, con = pair_of_endpoints(0, K_SETUP)
    confirm = dev.confirm()
    assert confirm == ref_data(ref["k_up"], 0, b"\x00\x00\x00\x0f" + b'{"t":"confirm"}')
    req = {"t": "req", "id": 0, "method": "GET", "path": "/", "headers": [], "end": True}
    sealed = dev.seal(req)
    assert sealed == ref_data(ref["k_up"], 1, e2e.encode_message(req))
    first = con.receive(e2e.parse_envelope(confirm))
    assert first.outcome is Outcome.CONFIRMED and con.confirmed
    second = con.receive(e2e.parse_envelope(sealed))
    assert second.outcome is Outcome.MESSAGE and second.header == req and second.body == b""
    answer = con.seal({"t": "res", "id": 0, "status": 200, "headers": [], "end": True}, b"ok")
    assert answer == ref_data(ref["k_down"], 0, e2e.encode_message(
        {"t": "res", "id": 0, "status": 200, "headers": [], "end": True}, b"ok"))
    got = dev.receive(e2e.parse_envelope(answer))
    assert got.outcome is Outcome.MESSAGE and got.body == b"ok"


def test_device_must_confirm_first_and_only_once():
    dev, _ = pair_of_endpoints()
    with pytest.raises(ChannelError):
        dev.seal({"t": "cancel", "id": 1})
    dev.confirm()
    with pytest.raises(ChannelError):
        dev.confirm()
    _, con = pair_of_endpoints()
    with pytest.raises(ChannelError):
        con.confirm()


def test_connector_ends_a_session_whose_first_message_is_not_the_confirm():
    dev, con = pair_of_endpoints()
    dev.confirmed = True  # a device that skips its confirm
    got = con.receive(e2e.parse_envelope(dev.seal({"t": "req", "id": 0, "method": "GET", "path": "/",
                                                   "headers": [], "end": True})))
    assert got.outcome is Outcome.NOT_CONFIRMED and got.ends_session and not con.live
    with pytest.raises(ChannelError):
        con.seal({"t": "err", "id": 0, "code": "busy", "message": ""})


def test_other_session_replay_forgery_gap_and_malformed():
    dev, con = pair_of_endpoints()
    confirm = dev.confirm()
    assert con.receive(e2e.parse_envelope(confirm)).outcome is Outcome.CONFIRMED
    # replay of the confirm (lower seq): dropped
    assert con.receive(e2e.parse_envelope(confirm)).outcome is Outcome.DROPPED
    # forgery: dropped, the session lives on
    original = dev.seal({"t": "cancel", "id": 1})
    m = bytearray(original)
    m[-1] ^= 1
    assert con.receive(e2e.parse_envelope(bytes(m))).outcome is Outcome.DROPPED and con.live
    assert con.receive(e2e.parse_envelope(original)).outcome is Outcome.MESSAGE
    # another session id
    other = e2e.Data(session_id=b"\xff" * 8, seq=2, sealed=b"\x00" * 16, raw=b"")
    assert con.receive(other).outcome is Outcome.OTHER_SESSION
    # an authentic message that breaks the format (a body on an ack)
    bad = dev.session.seal(b"\x00\x00\x00\x1c" + b'{"t":"ack","id":1,"bytes":1}' + b"x")
    got = con.receive(e2e.parse_envelope(bad))
    assert got.outcome is Outcome.MALFORMED and con.live
    # skip one: a gap ends the session
    dev.seal({"t": "cancel", "id": 3})
    got = con.receive(e2e.parse_envelope(dev.seal({"t": "cancel", "id": 4})))
    assert got.outcome is Outcome.GAP and got.ends_session and not con.live
    assert con.receive(e2e.parse_envelope(dev.seal({"t": "cancel", "id": 5}))).outcome is Outcome.OTHER_SESSION


def test_ended_endpoint_seals_nothing():
    dev, _ = pair_of_endpoints()
    dev.end()
    with pytest.raises(ChannelError):
        dev.confirm()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["body", "ack", "cancel"]), st.binary(max_size=64)), max_size=12),
       st.sets(st.integers(min_value=0, max_value=11)))
def test_property_delivered_in_order_exactly_once_until_a_loss(messages, lost):
    """Whatever is lost on the way, the receiver gets a prefix of what was
    sent, each once and in order; the first authentic DATA after a loss ends
    the session (never a silent skip)."""
    dev, con = pair_of_endpoints()
    assert con.receive(e2e.parse_envelope(dev.confirm())).outcome is Outcome.CONFIRMED
    sent, got = [], []
    for i, (t, body) in enumerate(messages):
        header = {"t": t, "id": i} if t != "body" else {"t": t, "id": i, "end": False}
        if t != "body":
            body = b""
        envelope = dev.seal(header, body)
        sent.append((header, body))
        if i in lost:
            continue
        r = con.receive(e2e.parse_envelope(envelope))
        if r.outcome is Outcome.MESSAGE:
            got.append((r.header, r.body))
        else:
            assert r.outcome in (Outcome.GAP, Outcome.OTHER_SESSION)
    assert got == sent[:len(got)]
    first_loss = min((i for i in lost if i < len(messages)), default=None)
    if first_loss is None:
        assert con.live and len(got) == len(messages)
    else:
        assert len(got) == first_loss
        assert con.live == all(i in lost for i in range(first_loss, len(messages)))


# -- credit windows ------------------------------------------------------------------


def test_send_window_fixed_values():
    w = SendWindow()
    assert w.available == e2e.CREDIT_WINDOW == 1048576 and not w.full
    w.sent(262144)
    w.sent(786432)
    assert w.full and w.available == 0
    with pytest.raises(ChannelError):
        w.sent(1)
    for bad in (-1, 1048577, 1.0, True, "1", None):
        assert not w.acked(bad)
    assert w.unacked == 1048576
    assert w.acked(0) and w.acked(1048576) and w.available == 1048576


def test_receive_window_batches_and_detects_overrun():
    w = ReceiveWindow(batch=ACK_BATCH)
    assert ACK_BATCH == 262144
    assert w.received(65536) and w.consumed(65536) == 0
    assert w.received(200000) and w.consumed(200000) == 265536
    assert w.unacked == 0
    assert w.received(e2e.CREDIT_WINDOW) and not w.received(1)
    immediate = ReceiveWindow()
    assert immediate.received(10) and immediate.consumed(4) == 4 and immediate.consumed(0) == 0
    assert immediate.unacked == 6


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=e2e.MAX_BODY_CHUNK), max_size=40), st.randoms())
def test_property_sender_and_receiver_windows_agree(parts, rnd):
    """A sender that respects its window never overruns the receiver, and
    the receiver's acks always bring the sender's window back."""
    send, recv = SendWindow(), ReceiveWindow(batch=ACK_BATCH)
    in_flight = []
    for n in parts:
        n = min(n, send.available)
        send.sent(n)
        assert recv.received(n)
        in_flight.append(n)
        if rnd.random() < 0.5 or send.full:
            for m in in_flight:
                ack = recv.consumed(m)
                if ack:
                    assert send.acked(ack)
            in_flight = []
        assert send.unacked == recv.unacked <= e2e.CREDIT_WINDOW
        if not in_flight:
            # all consumed: what is still unacked is less than one batch, so
            # the sender can always go on (no deadlock)
            assert send.unacked < ACK_BATCH


# -- answered HELLOs -------------------------------------------------------------------


def test_answered_hellos_remember_the_newest_per_device():
    answered = AnsweredHellos(per_device=2)
    hellos = [e2e.parse_envelope(fixed_handshake(K_DEVICE, 1)[0].hello)]
    hellos += [e2e.parse_envelope(e2e.DeviceHandshake.start(D, K_DEVICE, 1, bytes([9] * 32)).hello)
               for _ in range(2)]
    assert not answered.seen(D, hellos[0])
    for h in hellos:
        answered.answered(D, h)
    assert [answered.seen(D, h) for h in hellos] == [False, True, True]
    assert not answered.seen("f" * 32, hellos[2])
    answered.forget(D)
    assert len(answered) == 0 and not answered.seen(D, hellos[2])


def test_module_is_listed():
    assert set(channel.__all__) <= set(dir(channel))
