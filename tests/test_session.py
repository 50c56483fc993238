"""MQTTSession driven byte by byte: CONNECT outcomes, keep-alive, ordering."""

import pytest
from linchpin_common.contract import wire
from linchpin_gateway.auth import LoginGuard
from linchpin_gateway.ratelimit import RateLimiter
from linchpin_gateway.session import DEAD_AFTER, Limits
from tests.doubles import DEV, INST, FakeAuth, Peer, connect


@pytest.fixture
def auth():
    return FakeAuth()


@pytest.fixture
def peer(router, auth, clock):
    return lambda **kw: Peer(router, auth, clock, **kw)


def online(peer, user, password, *subs):
    p = peer()
    p.feed(connect(user, password))
    assert p.take() == [wire.Connack(0)]
    if subs:
        p.feed(wire.Subscribe(1, tuple((s, 1) for s in subs)))
        p.take()
    return p


def test_accepted(peer):
    p = peer()
    p.feed(connect(DEV, "dpw"))
    assert p.take() == [wire.Connack(0)] and p.closed is None


@pytest.mark.parametrize("user,password", [(DEV, "wrong"), ("nobody", "dpw"), (INST, "dpw")])
def test_bad_credentials_connack_4_and_close(peer, user, password):
    p = peer()
    p.feed(connect(user, password))
    assert p.take() == [wire.Connack(4)] and p.closed


def test_protocol_level_3_gets_connack_1(peer):
    p = peer()
    p.feed(connect(DEV, "dpw", protocol_name="MQIsdp", protocol_level=3))
    assert p.take() == [wire.Connack(1)] and p.closed


def test_empty_client_id_without_clean_session_connack_2(peer):
    p = peer()
    p.feed(connect(DEV, "dpw", client_id="", clean_session=False))
    assert p.take() == [wire.Connack(2)] and p.closed


def test_empty_client_id_with_clean_session_ok_and_session_present_0(peer):
    p = peer()
    p.feed(connect(DEV, "dpw", client_id="", clean_session=True))
    assert p.take() == [wire.Connack(0, session_present=False)]
    q = peer()
    q.feed(connect(INST, "ipw", clean_session=False))
    assert q.take() == [wire.Connack(0, session_present=False)]


def test_overloaded_connack_3(peer, auth):
    auth.overloaded = True
    p = peer()
    p.feed(connect(DEV, "dpw"))
    assert p.take() == [wire.Connack(3)] and p.closed


def test_store_unavailable_connack_3(peer, auth):
    auth.store_down = True
    p = peer()
    p.feed(connect(DEV, "dpw"))
    assert p.take() == [wire.Connack(3)] and p.closed == "store unavailable"


def test_packet_before_connect_closes(peer):
    p = peer()
    p.feed(wire.Pingreq())
    assert p.take() == [] and p.closed


def test_a_pingresp_goes_out_at_once_and_relayed_messages_in_runs(peer):
    """The PINGRESP of an idle session is sent alone (at once, without the
    reactor's write turn: linchpin_common/sendnow.py); everything else
    leaves the transport to batch."""
    p = online(peer, DEV, "dpw")
    p.feed(wire.Subscribe(7, ((f"devices/{DEV}/down", 0),)), wire.Pingreq())
    assert p.take()[-1] == wire.Pingresp()
    assert p.sent_alone == [wire.Pingresp()]


def test_second_connect_closes(peer):
    p = online(peer, DEV, "dpw")
    p.feed(connect(DEV, "dpw"))
    assert p.closed == "second CONNECT"


def test_qos2_publish_closes(peer):
    p = online(peer, DEV, "dpw")
    p.feed(wire.Publish(f"devices/{DEV}/up", b"x", qos=2, packet_id=5))
    assert p.closed


def test_malformed_closes(peer):
    p = online(peer, DEV, "dpw")
    p.session.data_received(b"\xc0\x01\x00")  # PINGREQ with a body
    assert p.closed == "malformed packet"


def test_oversize_closes_before_body(peer):
    p = peer(max_packet=512 * 1024)
    p.feed(connect(DEV, "dpw"))
    p.take()
    p.session.data_received(b"\x30" + wire.encode_remaining_length(2 * 1024 * 1024))
    assert p.closed and p.session.parser.buffered < 16


def test_packets_pipelined_behind_connect_wait_for_connack(peer, auth):
    auth.manual = True
    p = peer()
    p.feed(connect(DEV, "dpw"), wire.Subscribe(7, ((f"devices/{DEV}/down", 1),)), wire.Pingreq())
    assert p.take() == []
    auth.release()
    assert p.take() == [wire.Connack(0), wire.Suback(7, (1,)), wire.Pingresp()]


def test_connection_lost_during_auth_attaches_nothing(peer, auth, router):
    auth.manual = True
    p = peer()
    p.feed(connect(DEV, "dpw"))
    p.session.connection_lost()
    auth.release()
    assert p.take() == [] and not router.is_connected(DEV)


def test_relay_and_puback(peer):
    c = online(peer, INST, "ipw", "devices/+/up")
    d = online(peer, DEV, "dpw", f"devices/{DEV}/down")
    d.feed(wire.Publish(f"devices/{DEV}/up", b"\x00\x01payload", qos=1, packet_id=9))
    assert d.take() == [wire.Puback(9)]
    assert c.take() == [wire.Publish(f"devices/{DEV}/up", b"\x00\x01payload", qos=1, packet_id=1)]
    c.feed(wire.Publish(f"devices/{DEV}/down", b"back", qos=0))
    assert d.take() == [wire.Publish(f"devices/{DEV}/down", b"back", qos=0)]


def test_outgoing_packet_ids_wrap_and_skip_zero(peer):
    c = online(peer, INST, "ipw", "devices/+/up")
    d = online(peer, DEV, "dpw")
    c.session._next_id = 65534
    for _ in range(3):
        d.feed(wire.Publish(f"devices/{DEV}/up", b"x", qos=1, packet_id=1))
    assert [p.packet_id for p in c.take()] == [65535, 1, 2]


def test_connector_foreign_device_puback_not_closed(peer):
    c = online(peer, INST, "ipw", "devices/+/up")
    c.feed(wire.Publish(f"devices/{'e' * 32}/down", b"x", qos=1, packet_id=3))
    assert c.take() == [wire.Puback(3)] and c.closed is None


def test_device_foreign_publish_closed_without_puback(peer):
    d = online(peer, DEV, "dpw")
    d.feed(wire.Publish(f"devices/{'e' * 32}/up", b"x", qos=1, packet_id=3))
    assert d.take() == [] and d.closed


def test_unsubscribe(peer):
    d = online(peer, DEV, "dpw", "$gateway/status")
    d.feed(wire.Unsubscribe(4, ("$gateway/status",)))
    assert d.take() == [wire.Unsuback(4)]


def test_status_follows_suback(peer):
    d = online(peer, DEV, "dpw")
    d.feed(wire.Subscribe(2, (("$gateway/status", 0),)))
    assert d.take() == [wire.Suback(2, (0,)), wire.Publish("$gateway/status", b'{"connector": "offline"}')]


def test_takeover_closes_older(peer):
    a = online(peer, DEV, "dpw")
    b = online(peer, DEV, "dpw")
    assert a.closed == "session taken over" and b.closed is None


@pytest.mark.parametrize("keep_alive,limit", [(10, 15.0), (1, 1.5), (300, 450.0), (0, DEAD_AFTER),
                                               (301, DEAD_AFTER)])
def test_keep_alive(peer, clock, keep_alive, limit):
    p = peer()
    p.feed(connect(DEV, "dpw", keep_alive=keep_alive))
    clock.advance(limit * 0.9)
    p.feed(wire.Pingreq())
    assert p.take()[-1] == wire.Pingresp()
    clock.advance(limit * 0.9)
    assert p.closed is None
    clock.advance(limit * 0.2)
    assert p.closed == "keep-alive expired"


def test_partial_packet_does_not_count_as_activity(peer, clock):
    p = peer()
    p.feed(connect(DEV, "dpw", keep_alive=10))
    clock.advance(14)
    p.session.data_received(b"\xc0")  # half a PINGREQ
    clock.advance(1.1)
    assert p.closed == "keep-alive expired"


def test_no_connect_in_time_closes(peer, clock):
    p = peer()
    clock.advance(10)
    assert p.closed == "no CONNECT"


def test_closed_session_cancels_timers(peer, clock):
    p = online(peer, DEV, "dpw")
    p.session.connection_lost()
    assert clock.getDelayedCalls() == []


def guard(auth, clock, per_minute, **kw):
    return LoginGuard(auth, clock, RateLimiter(clock, per_minute, float(per_minute)),
                      RateLimiter(clock, per_minute, float(per_minute)), **kw)


def test_failed_logins_rate_limited_with_connack_5(router, auth, clock):
    logins = guard(auth, clock, 3)
    codes = []
    for _ in range(5):
        p = Peer(router, auth, clock, guard=logins)
        p.feed(connect(DEV, "wrong"))
        codes += [c.return_code for c in p.take()]
    assert codes == [4, 4, 4, 5, 5]
    # another address is not affected; right credentials never used from
    # this address still need a token
    other = Peer(router, auth, clock, guard=logins, host="198.51.100.7")
    other.feed(connect(DEV, "dpw"))
    assert other.take() == [wire.Connack(0)]
    p = Peer(router, auth, clock, guard=logins)
    p.feed(connect(INST, "ipw"))
    assert p.take() == [wire.Connack(5)]
    clock.advance(20)  # one token back after 20 s at 3 a minute
    p = Peer(router, auth, clock, guard=logins)
    p.feed(connect(INST, "ipw"))
    assert p.take() == [wire.Connack(0)]


def test_well_behaved_logins_never_limited(router, auth, clock):
    logins = guard(auth, clock, 20)
    for _ in range(200):
        p = Peer(router, auth, clock, guard=logins)
        p.feed(connect(DEV, "dpw"))
        assert p.take() == [wire.Connack(0)]
        clock.advance(3)


def test_slow_reader_cut_once_backlog_passes_limit(router, auth, clock):
    conn = Peer(router, auth, clock)
    conn.feed(connect(INST, "ipw"))
    limits = Limits(max_outbound=100_000)
    dev = Peer(router, auth, clock, limits=limits)
    dev.feed(connect(DEV, "dpw"), wire.Subscribe(1, ((f"devices/{DEV}/down", 0),)))
    dev.session.output_paused()  # its socket is full
    sent_before = dev.sent_bytes
    for _ in range(200):
        conn.feed(wire.Publish(f"devices/{DEV}/down", b"x" * 1000))
        dev.session.output_paused()  # Twisted repeats this on every write while full
        if dev.closed:
            break
    assert dev.closed == "slow consumer" and dev.aborted
    assert dev.sent_bytes - sent_before <= 100_000
    assert conn.closed is None


def test_drained_reader_is_not_cut(router, auth, clock):
    conn = Peer(router, auth, clock)
    conn.feed(connect(INST, "ipw"))
    dev = Peer(router, auth, clock, limits=Limits(max_outbound=100_000))
    dev.feed(connect(DEV, "dpw"), wire.Subscribe(1, ((f"devices/{DEV}/down", 0),)))
    for _ in range(50):
        dev.session.output_paused()
        for _ in range(50):
            conn.feed(wire.Publish(f"devices/{DEV}/down", b"x" * 1000))
        dev.session.output_resumed()
    assert dev.closed is None


def test_backed_up_connector_stops_reading_its_devices(router, auth, clock):
    """Its devices are those pinned to it: each is pinned by its first up message."""
    up = wire.Publish(f"devices/{DEV}/up", b"\x01\x01hello", qos=0)
    conn = Peer(router, auth, clock)
    conn.feed(connect(INST, "ipw"), wire.Subscribe(1, (("devices/+/up", 0),)))
    dev = Peer(router, auth, clock)
    dev.feed(connect(DEV, "dpw", keep_alive=10), up)
    conn.session.output_paused()
    assert not dev.reading
    clock.advance(60)  # not read, so its silence does not count against it
    assert dev.closed is None
    late = Peer(router, auth, clock)  # a device arriving meanwhile is held once pinned
    late.feed(connect(DEV, "dpw"))
    assert late.reading
    late.feed(up)
    assert not late.reading
    conn.session.output_resumed()
    assert late.reading
    conn.session.output_paused()
    conn.session.connection_lost()  # connector gone: nothing left to protect
    assert late.reading


def test_slow_password_check_is_not_a_dead_client(peer, auth, clock):
    auth.manual = True
    p = peer()
    p.feed(connect(DEV, "dpw"))
    clock.advance(25)  # the PBKDF2 queue is long
    assert p.closed is None
    auth.release()
    assert p.take() == [wire.Connack(0)]


def test_qos0_publish_forwarded_as_received_but_retain_cleared(peer):
    c = online(peer, INST, "ipw", "devices/+/up")
    d = online(peer, DEV, "dpw")
    sent = []
    c.send = lambda data, alone=False: sent.append(data)
    packet = wire.encode(wire.Publish(f"devices/{DEV}/up", b"same bytes"))
    d.session.data_received(packet)
    assert sent == [packet]
    d.session.data_received(wire.encode(wire.Publish(f"devices/{DEV}/up", b"same bytes", retain=True)))
    assert sent[-1] == packet  # re-encoded with retain 0
