"""Router: ACLs, routing, takeover and presence, with no sockets at all."""

from linchpin_gateway.router import CONNECTOR, DEVICE, SUBACK_FAILURE, Principal
from tests.doubles import FakeSession

I1, I2 = "a" * 32, "b" * 32
D1, D2, D3 = "1" * 32, "2" * 32, "3" * 32


def connector(router, instance=I1, subscribe=True, events=True):
    s = FakeSession()
    c = router.attach(Principal(CONNECTOR, instance, instance), s)
    topics = []
    if subscribe:
        topics.append(("devices/+/up", 1))
    if events:
        topics.append(("$gateway/events", 0))
    if topics:
        router.subscribe(c, topics)
        router.subscribed(c, topics)
    return c, s


def device(router, device_id=D1, instance=I1, status=True, down_qos=1):
    s = FakeSession()
    c = router.attach(Principal(DEVICE, device_id, instance), s)
    topics = [(f"devices/{device_id}/down", down_qos)]
    if status:
        topics.append(("$gateway/status", 0))
    router.subscribe(c, topics)
    router.subscribed(c, topics)
    return c, s


def test_device_acl(router):
    c = router.attach(Principal(DEVICE, D1, I1), FakeSession())
    codes = router.subscribe(c, [
        (f"devices/{D1}/down", 1), ("$gateway/status", 0), (f"devices/{D2}/down", 0),
        ("devices/+/down", 0), ("devices/#", 0), ("$gateway/events", 0), ("devices/+/up", 0),
        (f"devices/{D1}/up", 0),
    ])
    assert codes == [1, 0] + [SUBACK_FAILURE] * 6


def test_connector_acl_and_qos2_granted_as_1(router):
    c = router.attach(Principal(CONNECTOR, I1, I1), FakeSession())
    codes = router.subscribe(c, [("devices/+/up", 2), ("$gateway/events", 0), ("#", 0),
                                 (f"devices/{D1}/down", 0), ("$gateway/status", 0), ("devices/+/+", 0)])
    assert codes == [1, 0] + [SUBACK_FAILURE] * 4


def test_relay_both_ways_with_qos_min(router):
    conn, cs = connector(router)
    dev, ds = device(router, down_qos=0)
    assert router.publish(dev, f"devices/{D1}/up", b"\x00up", 1)
    assert cs.delivered[-1] == (f"devices/{D1}/up", b"\x00up", 1)
    assert router.publish(conn, f"devices/{D1}/down", b"dn\xff", 1)
    assert ds.delivered[-1] == (f"devices/{D1}/down", b"dn\xff", 0)


def test_device_foreign_publish_closes(router):
    connector(router)
    dev, _ = device(router)
    for topic in [f"devices/{D2}/up", f"devices/{D1}/down", "$gateway/status", "x"]:
        assert not router.publish(dev, topic, b"", 0)


def test_connector_publish_to_foreign_device_dropped_not_closed(router):
    conn, _ = connector(router, I1)
    other, os_ = device(router, D2, I2)
    assert router.publish(conn, f"devices/{D2}/down", b"secret", 0)
    assert router.publish(conn, f"devices/{D3}/down", b"nobody", 1)
    assert [d for d in os_.delivered if d[0].endswith("/down")] == []


def test_connector_other_topics_close(router):
    conn, _ = connector(router)
    for topic in ["devices/+/down", f"devices/{D1}/up", "devices/XYZ/down", f"devices/{D1.upper()}x/down",
                  f"devices/{'A' * 32}/down", "$gateway/events", "other"]:
        assert not router.publish(conn, topic, b"", 0)


def test_no_delivery_without_subscription(router):
    conn, cs = connector(router, subscribe=False)
    dev, ds = device(router)
    router.publish(dev, f"devices/{D1}/up", b"x", 0)
    assert [d for d in cs.delivered if d[0] != "$gateway/events"] == []


def test_delivery_to_other_instances_connector_never(router):
    c1, s1 = connector(router, I1)
    c2, s2 = connector(router, I2)
    dev, _ = device(router, D1, I1)
    router.publish(dev, f"devices/{D1}/up", b"x", 0)
    assert s2.events() == [] and [d for d in s2.delivered] == []
    assert any(d[1] == b"x" for d in s1.delivered)


def test_status_sent_after_suback_and_on_change(router):
    dev, ds = device(router)
    assert ds.statuses() == ["offline"]
    conn, cs = connector(router)
    assert ds.statuses() == ["offline", "online"]
    router.unsubscribe(conn, ["devices/+/up"])
    assert ds.statuses() == ["offline", "online", "offline"]
    router.subscribe(conn, [("devices/+/up", 1)])
    router.subscribed(conn, [("devices/+/up", 1)])
    router.detach(conn)
    assert ds.statuses() == ["offline", "online", "offline", "online", "offline"]


def test_connected_but_unsubscribed_connector_is_offline(router):
    dev, ds = device(router)
    connector(router, subscribe=False)
    assert ds.statuses() == ["offline"]


def test_connector_takeover_does_not_flip_presence(router, clock):
    dev, ds = device(router)
    old, olds = connector(router)
    new, news = connector(router)
    assert olds.closed == "session taken over"
    assert ds.statuses() == ["offline", "online"]
    clock.advance(60)
    assert ds.statuses() == ["offline", "online"]
    assert router.is_online(I1)


def test_connector_takeover_without_resubscribe_goes_offline_after_grace(router, clock):
    dev, ds = device(router)
    connector(router)
    connector(router, subscribe=False)
    assert ds.statuses() == ["offline", "online"]
    clock.advance(router.takeover_grace + 0.1)
    assert ds.statuses() == ["offline", "online", "offline"]


def test_connector_takeover_then_new_session_lost_is_offline_at_once(router, clock):
    dev, ds = device(router)
    connector(router)
    new, _ = connector(router, subscribe=False)
    router.detach(new)
    assert ds.statuses() == ["offline", "online", "offline"]
    clock.advance(60)
    assert ds.statuses() == ["offline", "online", "offline"]


def test_device_takeover_events_in_order(router):
    conn, cs = connector(router)
    d_old, olds = device(router)
    d_new, news = device(router)
    assert olds.closed == "session taken over"
    assert cs.events() == [("device_connected", D1), ("device_disconnected", D1), ("device_connected", D1)]
    # the old session's own late detach changes nothing
    router.detach(d_old)
    assert router.is_connected(D1)
    router.publish(conn, f"devices/{D1}/down", b"to-new", 0)
    assert news.delivered[-1][1] == b"to-new"
    assert all(d[1] != b"to-new" for d in olds.delivered)


def test_revoke_closes_and_announces(router):
    conn, cs = connector(router)
    dev, ds = device(router)
    router.revoke_device(I1, D1)
    assert ds.closed == "device revoked"
    assert not router.is_connected(D1)
    assert cs.events()[-2:] == [("device_disconnected", D1), ("device_revoked", D1)]


def test_revoke_by_other_instance_ignored(router):
    dev, ds = device(router, D1, I1)
    router.revoke_device(I2, D1)
    assert ds.closed is None


def test_paired_event(router):
    conn, cs = connector(router)
    router.device_paired(I1, D2)
    assert cs.events() == [("device_paired", D2)]


def test_drop_instance_closes_everything(router):
    conn, cs = connector(router)
    d1, s1 = device(router, D1)
    d2, s2 = device(router, D2)
    d3, s3 = device(router, D3, I2)
    router.drop_instance(I1)
    assert cs.closed and s1.closed and s2.closed and s3.closed is None
    assert not router.is_connected(I1) and not router.is_connected(D1)
    assert router.is_connected(D3)


def test_the_session_counts_follow_takeovers_revocations_and_deleted_instances(router):
    """/metrics reads ``count`` every scrape: it is kept as sessions come and
    go, and must match the sessions there are."""
    def live(role):
        return sum(1 for p in router.principals() if p.role == role)

    connector(router)
    connector(router, instance=I2)
    device(router, D1)
    device(router, D2)
    device(router, D3, instance=I2)
    device(router, D1)  # a takeover: still one session of D1
    assert (router.count(DEVICE), router.count(CONNECTOR)) == (3, 2)
    router.revoke_device(I1, D2)
    router.drop_instance(I2)
    assert (router.count(DEVICE), router.count(CONNECTOR)) == (1, 1) == (live(DEVICE), live(CONNECTOR))
