"""Several connectors per instance at one gateway node (PROTOCOL.md section 4,
"Several connectors per instance"): names, pins, drain, ``moved``, events."""

import json

import pytest
from linchpin_common.contract import wire
from linchpin_gateway.metrics import GatewayCollector
from linchpin_gateway.router import CONNECTOR, DEVICE, Principal, rank
from tests.doubles import DEV, INST, FakeAuth, FakeSession, Peer, connect

I = "a" * 32
HELLO = b"\x01\x01" + bytes(61)
DATA = b"\x01\x03" + bytes(40)
DEVICES = [f"{n:032x}" for n in range(1, 21)]


def connector(router, name, instance=I, subscribe=True):
    s = FakeSession()
    c = router.attach(Principal(CONNECTOR, instance, instance), s, name)
    topics = [("$gateway/events", 0)] + ([("devices/+/up", 0)] if subscribe else [])
    router.subscribe(c, topics)
    router.subscribed(c, topics)
    return c, s


def device(router, device_id, instance=I):
    s = FakeSession()
    c = router.attach(Principal(DEVICE, device_id, instance), s)
    topics = [(f"devices/{device_id}/down", 0), ("$gateway/status", 0)]
    router.subscribe(c, topics)
    router.subscribed(c, topics)
    return c, s


def ups(session):
    """The device ids whose up messages reached this connector session."""
    return [topic.split("/")[1] for topic, _, _ in session.delivered if topic.endswith("/up")]


def send(router, dev, payload):
    assert router.publish(dev, f"devices/{dev.principal.id}/up", payload, 0)


def first(names, device_id):
    return max(names, key=lambda name: rank(name, device_id))


def test_sessions_of_other_names_coexist_and_the_same_name_takes_over(router):
    a, sa = connector(router, "a")
    b, sb = connector(router, "b")
    assert sa.closed is None and sb.closed is None and a.attached and b.attached
    a2, _ = connector(router, "a")
    assert sa.closed == "session taken over" and not a.attached and sb.closed is None
    assert router.connectors_per_instance() == {2: 1}


def test_a_hello_pins_by_rendezvous_and_the_rest_follows_the_pin(router):
    _, sa = connector(router, "a")
    _, sb = connector(router, "b")
    sessions = {"a": sa, "b": sb}
    for device_id in DEVICES:
        dev, _ = device(router, device_id)
        send(router, dev, HELLO)
        send(router, dev, DATA)
        assert router.pinned_to(device_id) == first(["a", "b"], device_id)
        assert ups(sessions[first(["a", "b"], device_id)])[-2:] == [device_id, device_id]
    spread = [len(ups(sa)) // 2, len(ups(sb)) // 2]
    assert sum(spread) == 20 and all(6 <= n <= 14 for n in spread), spread  # within 30 % of even


def test_a_connector_joining_takes_only_new_pins(router):
    _, sa = connector(router, "a")
    devs = [device(router, d)[0] for d in DEVICES]
    for dev in devs:
        send(router, dev, HELLO)
    assert {router.pinned_to(d) for d in DEVICES} == {"a"}
    _, sb = connector(router, "b")
    for dev in devs:
        send(router, dev, DATA)  # sessions in progress stay where they are
    assert ups(sb) == []
    newcomer, _ = device(router, "f" * 32)
    send(router, newcomer, DATA)  # no pin yet: pinned now, as by a HELLO
    assert router.pinned_to("f" * 32) == first(["a", "b"], "f" * 32)


def test_a_drained_connector_keeps_its_devices_and_gets_no_new_ones(router):
    a, sa = connector(router, "a")
    on_a = [d for d in DEVICES if first(["a", "b"], d) == "a"][:2]
    dev, ds = device(router, on_a[0])
    send(router, dev, HELLO)
    _, sb = connector(router, "b")
    assert router.publish(a, "$gateway/drain", b"", 0)
    send(router, dev, DATA)
    assert ups(sa) == [on_a[0]] * 2 and ups(sb) == []  # still its own
    assert router.publish(a, f"devices/{on_a[0]}/down", b"x", 0)  # and it still answers
    assert ds.delivered[-1][0] == f"devices/{on_a[0]}/down"
    other, _ = device(router, on_a[1])
    send(router, other, HELLO)  # would rank a first: a drains, so b
    assert ups(sb) == [on_a[1]]
    send(router, dev, HELLO)  # the drained connector's device re-handshakes: moves
    assert router.pinned_to(on_a[0]) == "b"
    assert router.is_online(I)


def test_the_pinned_connector_going_tells_its_devices_moved_and_only_them(router):
    a, sa = connector(router, "a")
    _, sb = connector(router, "b")
    devs = {d: device(router, d) for d in DEVICES[:8]}
    for dev, _ in devs.values():
        send(router, dev, HELLO)
    a.session.close("test")
    router.detach(a)
    for device_id, (dev, ds) in devs.items():
        statuses = [json.loads(p)["connector"] for t, p, _ in ds.delivered if t == "$gateway/status"]
        if first(["a", "b"], device_id) == "a":
            assert statuses == ["online", "moved"]
            assert router.pinned_to(device_id) is None
            send(router, dev, HELLO)
            assert router.pinned_to(device_id) == "b" and ups(sb)[-1] == device_id
        else:
            assert statuses == ["online"]
            assert router.pinned_to(device_id) == "b"


def test_unsubscribing_the_up_filter_moves_the_devices_too(router):
    a, _ = connector(router, "a")
    connector(router, "b")
    on_a = next(d for d in DEVICES if first(["a", "b"], d) == "a")
    dev, ds = device(router, on_a)
    send(router, dev, HELLO)
    router.unsubscribe(a, ["devices/+/up"])
    assert ds.statuses() == ["online", "moved"]


def test_with_no_other_ready_connector_the_devices_are_told_offline(router):
    a, _ = connector(router, "a")
    dev, ds = device(router, DEVICES[0])
    send(router, dev, HELLO)
    router.detach(a)
    assert ds.statuses() == ["online", "offline"] and not router.is_online(I)


def test_devices_stranded_by_a_draining_sibling_hear_online_when_one_is_ready(router):
    a, _ = connector(router, "a")
    b, _ = connector(router, "b")
    assert router.publish(b, "$gateway/drain", b"", 0)
    dev, ds = device(router, DEVICES[0])
    send(router, dev, HELLO)
    assert router.pinned_to(DEVICES[0]) == "a"
    router.detach(a)
    assert ds.statuses() == ["online", "offline"]  # b is online but takes no one
    assert router.is_online(I)
    connector(router, "c")
    assert ds.statuses() == ["online", "offline", "online"]
    send(router, dev, HELLO)
    assert router.pinned_to(DEVICES[0]) == "c"


def test_a_takeover_under_the_same_name_keeps_the_pins(router):
    connector(router, "a")
    connector(router, "b")
    on_a = next(d for d in DEVICES if first(["a", "b"], d) == "a")
    dev, ds = device(router, on_a)
    send(router, dev, HELLO)
    _, sa2 = connector(router, "a")
    assert ds.statuses() == ["online"]
    send(router, dev, DATA)
    assert ups(sa2) == [on_a]


def test_a_takeover_whose_new_session_never_subscribes_moves_the_devices_after_the_grace(router, clock):
    connector(router, "a")
    connector(router, "b")
    on_a = next(d for d in DEVICES if first(["a", "b"], d) == "a")
    dev, ds = device(router, on_a)
    send(router, dev, HELLO)
    connector(router, "a", subscribe=False)  # takes "a" over, then takes no up messages
    clock.advance(9)
    assert ds.statuses() == ["online"]
    clock.advance(2)
    assert ds.statuses() == ["online", "moved"]
    send(router, dev, HELLO)
    assert router.pinned_to(on_a) == "b"


def test_events_reach_every_connector_of_the_instance(router):
    _, sa = connector(router, "a")
    _, sb = connector(router, "b")
    device(router, DEVICES[0])
    router.revoke_device(I, DEVICES[0])
    for s in (sa, sb):
        assert s.events() == [("device_connected", DEVICES[0]), ("device_disconnected", DEVICES[0]),
                              ("device_revoked", DEVICES[0])]


def test_a_backed_up_connector_holds_only_the_devices_pinned_to_it(router):
    a, _ = connector(router, "a")
    connector(router, "b")
    on_a = next(d for d in DEVICES if first(["a", "b"], d) == "a")
    on_b = next(d for d in DEVICES if first(["a", "b"], d) == "b")
    da, sda = device(router, on_a)
    db, sdb = device(router, on_b)
    send(router, da, HELLO)
    send(router, db, HELLO)
    router.backed_up(a, True)
    assert sda.held and not sdb.held
    router.detach(a)  # gone: its devices are read again, to move
    assert not sda.held


def test_connectors_per_instance_are_metrics_without_ids(make_gateway):
    gw = make_gateway()
    connector(gw.router, "a")
    connector(gw.router, "b")
    connector(gw.router, "a", instance="c" * 32)
    families = {family.name: family for family in GatewayCollector(gw).collect()}
    spread = {s.labels["sessions"]: s.value for s in families["lmgateway_instances_by_connector_sessions"].samples}
    assert spread == {"1": 1, "2": 1}
    assert all(I not in str(s.labels) for f in families.values() for s in f.samples)


# -- at the session: CONNECT of a connector ------------------------------------------------


@pytest.fixture
def auth():
    return FakeAuth()


def test_a_connector_needs_a_client_identifier_that_names_it(router, auth, clock):
    for bad in ["", "a b", "x" * 65, "é", "a/b"]:
        p = Peer(router, auth, clock)
        p.feed(connect(INST, "ipw", client_id=bad))
        assert p.take() == [wire.Connack(2)], bad
        assert p.closed
    p = Peer(router, auth, clock)
    p.feed(connect(INST, "ipw", client_id="conn-1.example_A"))
    assert p.take() == [wire.Connack(0)]


def test_a_device_may_use_any_client_identifier(router, auth, clock):
    p = Peer(router, auth, clock)
    p.feed(connect(DEV, "dpw", client_id="a b"))
    assert p.take() == [wire.Connack(0)]


def test_at_most_16_connector_sessions_per_instance(router, auth, clock):
    peers = []
    for n in range(16):
        p = Peer(router, auth, clock)
        p.feed(connect(INST, "ipw", client_id=f"c{n}"))
        assert p.take() == [wire.Connack(0)]
        peers.append(p)
    extra = Peer(router, auth, clock)
    extra.feed(connect(INST, "ipw", client_id="c16"))
    assert extra.take() == [wire.Connack(3)] and extra.closed
    again = Peer(router, auth, clock)  # a takeover of a name fits
    again.feed(connect(INST, "ipw", client_id="c3"))
    assert again.take() == [wire.Connack(0)] and peers[3].closed


def test_a_device_may_not_publish_to_drain(router, auth, clock):
    p = Peer(router, auth, clock)
    p.feed(connect(DEV, "dpw"), wire.Publish("$gateway/drain", b"", qos=0))
    assert p.closed
