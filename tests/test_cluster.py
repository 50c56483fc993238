"""Several nodes in memory: routers joined by MemoryBus on one hub, a Clock.

The same cluster code runs on Redis in tests/test_scaleout.py; here every
message between nodes waits in the hub until ``pump()``, so each test
decides what has arrived where.
"""

import pytest
from twisted.internet.task import Clock

from linchpin_common.contract import wire
from linchpin_gateway.bus import MemoryBus, MemoryHub
from linchpin_gateway.busmessages import Event
from linchpin_gateway.cluster import DEAD_AFTER, HEARTBEAT, Cluster
from linchpin_gateway.ratelimit import RateLimiter
from linchpin_gateway.router import CONNECTOR, DEVICE, Principal, Router
from tests.doubles import FakeAuth, FakeSession

I = "a" * 32
D1, D2 = "1" * 32, "2" * 32
ALL_BYTES = bytes(range(256)) * 3


class Node:
    def __init__(self, hub, clock, name):
        self.router = Router(clock)
        self.bus = MemoryBus(hub)
        self.auth = FakeAuth()
        self.login = RateLimiter(clock, 5, 5.0)
        self.cluster = Cluster(self.router, self.bus, clock, authenticator=self.auth, limiters={"login": self.login},
                               node=name.encode())
        self.router.cluster = self.cluster
        self.cluster.start()

    def connector(self, instance=I, subscribe=True):
        s = FakeSession()
        c = self.router.attach(Principal(CONNECTOR, instance, instance), s)
        if subscribe:
            self.router.subscribe(c, [("devices/+/up", 1), ("$gateway/events", 0)])
            self.router.subscribed(c, [("devices/+/up", 1), ("$gateway/events", 0)])
        return c, s

    def device(self, device_id=D1, instance=I):
        s = FakeSession()
        c = self.router.attach(Principal(DEVICE, device_id, instance), s)
        topics = [(f"devices/{device_id}/down", 1), ("$gateway/status", 0)]
        self.router.subscribe(c, topics)
        self.router.subscribed(c, topics)
        return c, s

    def kill(self, hub):
        """kill -9: it stops speaking at once, its keys stay until their TTL."""
        hub.buses.remove(self.bus)
        self.cluster._beat.stop()
        self.bus.connected = False


@pytest.fixture
def hub(clock):
    return MemoryHub(clock)


@pytest.fixture
def nodes(hub, clock):
    made = [Node(hub, clock, name) for name in ("A", "B", "C")]
    return made


def pump(hub):
    while hub.flush():
        pass


def advance(clock, hub, seconds, step=0.5):
    """Let time pass, with messages arriving as they would."""
    for _ in range(int(seconds / step)):
        clock.advance(step)
        pump(hub)


def test_relay_both_ways_byte_exact_across_nodes(nodes, hub):
    a, b, _ = nodes
    conn, cs = a.connector()
    dev, ds = b.device()
    pump(hub)
    assert b.router.publish(dev, f"devices/{D1}/up", ALL_BYTES, 1)
    pump(hub)
    assert (f"devices/{D1}/up", ALL_BYTES, 1) in cs.delivered
    assert a.router.publish(conn, f"devices/{D1}/down", ALL_BYTES[::-1], 0)
    pump(hub)
    assert (f"devices/{D1}/down", ALL_BYTES[::-1], 0) in ds.delivered
    assert b.cluster.stats.messages_out == 1 and b.cluster.stats.messages_in == 1


def test_a_qos0_publish_crosses_nodes_as_the_very_packet_received(nodes, hub):
    a, b, _ = nodes
    conn, cs = a.connector()
    dev, ds = b.device()
    pump(hub)
    up = wire.encode_publish(f"devices/{D1}/up".encode(), ALL_BYTES, 0)
    assert b.router.publish(dev, f"devices/{D1}/up", ALL_BYTES, 0, up)
    down = wire.encode_publish(f"devices/{D1}/down".encode(), ALL_BYTES[::-1] * 200, 0)  # a longer length field
    assert a.router.publish(conn, f"devices/{D1}/down", ALL_BYTES[::-1] * 200, 0, down)
    pump(hub)
    assert cs.raw == [up] and ds.raw == [down]
    assert (a.cluster.stats.messages_in, b.cluster.stats.messages_in) == (1, 1)
    assert (a.router.stats.messages_relayed, a.router.stats.bytes_relayed) == (1, len(ALL_BYTES))
    assert (b.router.stats.messages_relayed, b.router.stats.bytes_relayed) == (1, len(ALL_BYTES) * 200)


def test_down_message_for_another_instances_device_is_dropped(nodes, hub):
    a, b, _ = nodes
    other, _ = a.connector("b" * 32)
    dev, ds = b.device()
    pump(hub)
    a.router.publish(other, f"devices/{D1}/down", b"x", 0)
    a.router.publish(other, f"devices/{D1}/down", b"y", 0, wire.encode_publish(f"devices/{D1}/down".encode(), b"y"))
    pump(hub)
    assert [t for t, _, _ in ds.delivered if t.endswith("/down")] == []


def test_presence_and_events_across_nodes(nodes, hub):
    a, b, _ = nodes
    dev, ds = b.device()
    pump(hub)
    assert ds.statuses() == ["offline"]
    conn, cs = a.connector()
    pump(hub)
    assert ds.statuses() == ["offline", "online"]
    d2, ds2 = b.device(D2)
    pump(hub)
    assert ds2.statuses() == ["online"]
    b.router.detach(d2)
    pump(hub)
    assert cs.events() == [("device_connected", D2), ("device_disconnected", D2)]
    a.router.unsubscribe(conn, ["devices/+/up"])
    pump(hub)
    assert ds.statuses() == ["offline", "online", "offline"]


def test_status_waits_for_the_other_nodes_answer(nodes, hub):
    a, b, _ = nodes
    a.connector()
    pump(hub)
    dev, ds = b.device()  # the GET of the online key answers at once in memory
    assert ds.statuses() == ["online"]


def test_device_takeover_across_nodes(nodes, hub):
    a, b, c = nodes
    conn, cs = c.connector()
    old, old_s = a.device()
    pump(hub)
    new, new_s = b.device()
    pump(hub)
    assert old_s.closed == "session taken over" and new_s.closed is None
    assert not old.attached and new.attached
    assert cs.events() == [("device_connected", D1), ("device_disconnected", D1), ("device_connected", D1)]
    # the connector's messages now reach only the newer session
    c.router.publish(conn, f"devices/{D1}/down", b"hi", 0)
    pump(hub)
    assert (f"devices/{D1}/down", b"hi", 0) in new_s.delivered
    assert (f"devices/{D1}/down", b"hi", 0) not in old_s.delivered


def test_late_disconnect_of_an_older_session_does_not_override(nodes, hub):
    a, b, c = nodes
    conn, cs = c.connector()
    pump(hub)
    c.cluster._remote_event(I, Event("device_connected", D1, b"B", 7))
    c.cluster._remote_event(I, Event("device_disconnected", D1, b"A", 6))
    assert cs.events() == [("device_connected", D1)]


def test_connector_takeover_across_nodes_keeps_devices_online(nodes, hub, clock):
    a, b, c = nodes
    dev, ds = c.device()
    a.connector()
    pump(hub)
    b.connector()
    pump(hub)
    advance(clock, hub, 12)  # past the takeover grace on A
    assert ds.statuses() == ["offline", "online"]
    assert a.router.count(CONNECTOR) == 0 and b.router.is_online(I)


def test_dead_node_connector_offline_and_devices_disconnected(nodes, hub, clock):
    a, b, _ = nodes
    conn, cs = a.connector()
    dev, ds = b.device()
    conn_b, cs_b = b.connector("b" * 32)
    dev_a, _ = a.device(D2, "b" * 32)
    advance(clock, hub, HEARTBEAT * 2)
    a.kill(hub)
    start = clock.seconds()
    while ds.statuses()[-1] != "offline":
        advance(clock, hub, 0.5)
        assert clock.seconds() - start <= 15
    assert clock.seconds() - start <= DEAD_AFTER + HEARTBEAT + 1
    assert ("device_disconnected", D2) in cs_b.events()
    # the connector comes back through B: devices there see it online again
    b.connector()
    pump(hub)
    assert ds.statuses()[-1] == "online"


def test_revocation_deletion_and_password_change_reach_every_node(nodes, hub):
    a, b, _ = nodes
    conn, cs = b.connector()
    dev, ds = b.device()
    pump(hub)
    a.cluster.revoked(I, D1)
    a.cluster.password_changed(I)
    pump(hub)
    assert ds.closed == "device revoked"
    assert D1 in b.auth.forgotten and I in b.auth.forgotten
    assert ("device_revoked", D1) not in cs.events()  # announced once, by the node that revoked
    a.cluster.instance_deleted(I, [D2])
    pump(hub)
    assert cs.closed == "instance deleted" and D2 in b.auth.forgotten


def test_rate_limit_budget_is_shared(nodes, hub):
    a, b, c = nodes
    for _ in range(3):
        assert a.login.charge("192.0.2.9")
    for _ in range(2):
        assert b.login.charge("192.0.2.9")
    pump(hub)
    assert not c.login.allowed("192.0.2.9")
    assert not a.login.allowed("192.0.2.9") and not b.login.allowed("192.0.2.9")


def test_bus_down_local_traffic_flows_cross_node_dropped_then_recovers(nodes, hub, clock):
    a, b, _ = nodes
    conn, cs = a.connector()
    local, ls = a.device(D2)
    remote, rs = b.device()
    pump(hub)
    b.bus.set_connected(False)
    assert rs.statuses()[-1] == "offline"  # what is elsewhere is unknown
    assert b.router.publish(remote, f"devices/{D1}/up", b"lost", 1)  # dropped at once
    assert b.cluster.stats.dropped == 1
    assert a.router.publish(local, f"devices/{D2}/up", b"local", 0)
    assert (f"devices/{D2}/up", b"local", 0) in cs.delivered
    advance(clock, hub, DEAD_AFTER + HEARTBEAT)
    assert ("device_disconnected", D1) in cs.events()
    hub.restart()  # and Redis lost every key meanwhile
    b.bus.set_connected(True)
    pump(hub)
    assert rs.statuses()[-1] == "online"
    assert cs.events()[-1] == ("device_connected", D1)
    assert b.router.publish(remote, f"devices/{D1}/up", b"again", 0)
    pump(hub)
    assert (f"devices/{D1}/up", b"again", 0) in cs.delivered
    advance(clock, hub, HEARTBEAT)
    assert hub.get(b"lm:own:" + D1.encode()).startswith(b"B ")  # taken again


def test_refresh_finding_a_newer_owner_closes_the_older_session(nodes, hub, clock):
    a, _, _ = nodes
    dev, ds = a.device()
    pump(hub)
    hub.set(b"lm:own:" + D1.encode(), b"Z 99", 10_000)  # a newer claim whose T was lost
    advance(clock, hub, HEARTBEAT)
    assert ds.closed == "session taken over"


def test_list_connected_across_nodes(nodes, hub):
    a, b, _ = nodes
    b.device()
    pump(hub)
    from tests.doubles import result

    assert result(a.cluster.connected([D1, D2])) == {D1}


def test_a_bus_that_stops_answering_is_reset(nodes, hub, clock):
    a, _, _ = nodes
    a.bus.hung = True
    advance(clock, hub, HEARTBEAT * 5)
    assert a.bus.resets == 1


def test_a_clean_stop_is_not_taken_for_a_death(nodes, hub, clock):
    a, b, _ = nodes
    advance(clock, hub, HEARTBEAT * 2)
    assert b"A" in b.cluster.last_seen
    a.cluster.stop()
    pump(hub)
    assert b"A" not in b.cluster.last_seen
    advance(clock, hub, DEAD_AFTER + HEARTBEAT)
    assert b.cluster.stats.dead_nodes == 0


def test_a_device_connecting_while_the_bus_is_down_is_announced_when_it_is_back(nodes, hub):
    a, b, _ = nodes
    conn, cs = a.connector()
    pump(hub)
    b.bus.set_connected(False)
    dev, ds = b.device()
    assert ds.statuses() == ["offline"]
    b.bus.set_connected(True)
    pump(hub)
    assert ("device_connected", D1) in cs.events()
    assert ds.statuses() == ["offline", "online"]


def test_a_node_alone_loads_no_bus_code(tmp_path):
    """Without --bus (and --store), neither the Redis client nor psycopg is imported."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from twisted.internet.testing import MemoryReactorClock\n"
            "from linchpin_gateway import tap\n"
            "options = tap.Options()\n"
            f"options.parseOptions(['--data-dir', {str(tmp_path / 'gw')!r}, '--listen', 'tcp:0'])\n"
            "gateway = tap.makeService(options, MemoryReactorClock())\n"
            "from linchpin_gateway.peers import LOCAL_ONLY\n"
            "assert gateway.cluster is None and gateway.router.cluster is LOCAL_ONLY\n"
            "loaded = [m for m in ('linchpin_gateway.bus', 'linchpin_gateway.cluster', 'linchpin_gateway.redis_client',\n"
            "                      'txredisapi', 'hiredis', 'psycopg', 'psycopg_pool') if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_connector_offline_again_before_its_claim_is_answered_is_not_announced_online(nodes, hub):
    """Its SUBSCRIBE and UNSUBSCRIBE while the bus is down: when the claim
    is answered, other nodes hear nothing of it, and however often it
    toggled, at most one announcement waits."""
    a, b, _ = nodes
    dev, ds = b.device()
    pump(hub)
    a.bus.set_connected(False)
    conn, _ = a.connector(subscribe=False)
    for _ in range(100):
        a.router.subscribe(conn, [("devices/+/up", 1)])
        a.router.subscribed(conn, [("devices/+/up", 1)])
        a.router.unsubscribe(conn, ["devices/+/up"])
    assert len(conn.held.waiters) <= 1
    a.bus.set_connected(True)
    pump(hub)
    assert ds.statuses() == ["offline"]
    assert hub.hashes.get(b"lm:conns:" + I.encode(), {}) == {}  # nothing said of it
    # once it subscribes for good, it is announced
    a.router.subscribe(conn, [("devices/+/up", 1)])
    a.router.subscribed(conn, [("devices/+/up", 1)])
    pump(hub)
    assert ds.statuses() == ["offline", "online"]


def test_the_cluster_and_the_local_only_peer_provide_the_router_seam(nodes):
    from zope.interface.verify import verifyObject

    from linchpin_gateway.peers import LOCAL_ONLY, IClusterPeer

    assert verifyObject(IClusterPeer, nodes[0].cluster)
    assert verifyObject(IClusterPeer, LOCAL_ONLY)
    assert Router(Clock()).cluster is LOCAL_ONLY


def test_ownership_has_one_table():
    from linchpin_gateway.cluster import _OWNERSHIP, Ownership

    assert _OWNERSHIP.reachable(Ownership.CLAIMING) == set(Ownership)
    assert _OWNERSHIP.ignores(Ownership.RELEASED, "release")


def test_a_claim_answered_after_the_session_left_lets_the_key_go(nodes, hub):
    a, _, _ = nodes
    a.bus.set_connected(False)
    dev, _ = a.device()  # the claim fails: CLAIMING
    h = dev.held
    a.router.detach(dev)
    from linchpin_gateway.cluster import Ownership

    assert h.state is Ownership.RELEASED
    a.bus.set_connected(True)  # nothing is claimed again for a session that left
    assert hub.get(b"lm:own:" + D1.encode()) is None


# -- several connectors of one instance on several nodes ------------------------------

from linchpin_gateway.router import rank  # noqa: E402

HELLO = b"\x01\x01" + bytes(61)
DATA = b"\x01\x03" + bytes(40)
DEVICES = [f"{n:032x}" for n in range(1, 21)]


def named(node, name, instance=I):
    s = FakeSession()
    c = node.router.attach(Principal(CONNECTOR, instance, instance), s, name)
    topics = [("devices/+/up", 0), ("$gateway/events", 0)]
    node.router.subscribe(c, topics)
    node.router.subscribed(c, topics)
    return c, s


def ups(session):
    return [topic.split("/")[1] for topic, _, _ in session.delivered if topic.endswith("/up")]


def first(names, device_id):
    return max(names, key=lambda name: rank(name, device_id))


def send(node, dev, payload):
    assert node.router.publish(dev, f"devices/{dev.principal.id}/up", payload, 0)


def test_devices_on_one_node_are_pinned_to_connectors_on_others_as_on_one_node(nodes, hub):
    a, b, c = nodes
    _, sa = named(a, "a")
    _, sb = named(b, "b")
    pump(hub)
    for device_id in DEVICES:
        dev, ds = c.device(device_id)
        pump(hub)
        assert ds.statuses() == ["online"]
        send(c, dev, HELLO)
        send(c, dev, DATA)
        pump(hub)
        assert c.router.pinned_to(device_id) == first(["a", "b"], device_id)
    assert sorted(ups(sa) + ups(sb)) == sorted(DEVICES * 2)
    assert all(first(["a", "b"], d) == "a" for d in ups(sa)) and all(first(["a", "b"], d) == "b" for d in ups(sb))


def test_a_connector_closing_on_another_node_moves_its_devices_at_once(nodes, hub):
    a, b, c = nodes
    conn_a, _ = named(a, "a")
    _, sb = named(b, "b")
    pump(hub)
    devs = {d: c.device(d) for d in DEVICES[:8]}
    for dev, _ in devs.values():
        send(c, dev, HELLO)
    pump(hub)
    a.router.detach(conn_a)
    pump(hub)
    for device_id, (dev, ds) in devs.items():
        if first(["a", "b"], device_id) == "a":
            assert ds.statuses() == ["online", "moved"]
            send(c, dev, HELLO)
            pump(hub)
            assert c.router.pinned_to(device_id) == "b" and ups(sb)[-1] == device_id
        else:
            assert ds.statuses() == ["online"]


def pinned_to_a(nodes):
    """Connectors a on node A and b on B; a device on C, pinned to a."""
    a, b, c = nodes
    named(a, "a")
    named(b, "b")
    on_a = next(d for d in DEVICES if first(["a", "b"], d) == "a")
    dev, ds = c.device(on_a)
    send(c, dev, HELLO)
    return on_a, dev, ds


def test_a_node_killed_moves_the_devices_of_its_connectors(nodes, hub, clock):
    a, b, c = nodes
    on_a, dev, ds = pinned_to_a(nodes)
    advance(clock, hub, HEARTBEAT * 2)
    a.kill(hub)
    start = clock.seconds()
    while ds.statuses()[-1] != "moved":
        advance(clock, hub, 0.5)
        assert clock.seconds() - start <= DEAD_AFTER + HEARTBEAT + 1
    send(c, dev, HELLO)
    assert c.router.pinned_to(on_a) == "b"


def test_a_connector_draining_on_another_node_keeps_its_devices_and_takes_no_new_ones(nodes, hub):
    a, b, c = nodes
    conn_a, sa = named(a, "a")
    _, sb = named(b, "b")
    on_a = [d for d in DEVICES if first(["a", "b"], d) == "a"][:2]
    dev, ds = c.device(on_a[0])
    send(c, dev, HELLO)
    pump(hub)
    assert a.router.publish(conn_a, "$gateway/drain", b"", 0)
    pump(hub)
    send(c, dev, DATA)
    other, _ = c.device(on_a[1])
    send(c, other, HELLO)
    pump(hub)
    assert ups(sa) == [on_a[0]] * 2 and ups(sb) == [on_a[1]]
    assert ds.statuses() == ["online"]


def test_a_connector_restarting_under_its_name_through_another_node_keeps_its_devices(nodes, hub, clock):
    a, b, c = nodes
    on_a, dev, ds = pinned_to_a(nodes)
    pump(hub)
    _, sa2 = named(b, "a")  # the same name, now through B: A's session is taken over
    pump(hub)
    advance(clock, hub, 12)  # past the takeover grace
    assert a.router.count(CONNECTOR) == 0
    assert ds.statuses() == ["online"]
    send(c, dev, DATA)
    pump(hub)
    assert ups(sa2) == [on_a]


def test_events_reach_every_connector_of_the_instance_on_every_node_once(nodes, hub):
    a, b, c = nodes
    _, sa = named(a, "a")
    _, sb = named(b, "b")
    _, sb2 = named(b, "b2")
    pump(hub)
    dev, _ = c.device(D1)
    pump(hub)
    c.router.detach(dev)
    pump(hub)
    for s in (sa, sb, sb2):
        assert s.events() == [("device_connected", D1), ("device_disconnected", D1)]


def test_at_most_16_connector_sessions_of_an_instance_across_nodes(nodes, hub):
    a, b, c = nodes
    for n in range(8):
        named(a, f"a{n}")
        named(b, f"b{n}")
    pump(hub)
    from tests.doubles import result

    principal = Principal(CONNECTOR, I, I)
    assert result(c.router.connector_room(principal, "c0")) is False  # C reads the registry
    assert result(c.router.connector_room(principal, "a3")) is True  # a takeover of a name fits
    c.device(D1)  # now C has a view of the instance
    assert result(c.router.connector_room(principal, "c0")) is False


def test_a_node_learns_the_connectors_from_the_registry_and_again_after_redis_restarts(nodes, hub):
    a, b, c = nodes
    named(a, "a")
    named(b, "b")
    pump(hub)
    assert set(hub.hashes[b"lm:conns:" + I.encode()]) == {b"a", b"b"}
    dev, ds = c.device(D1)  # C had heard nothing: it reads the registry
    assert ds.statuses() == ["online"]
    send(c, dev, HELLO)
    assert c.router.pinned_to(D1) == first(["a", "b"], D1)
    hub.restart()
    c.bus.set_connected(False)
    assert ds.statuses()[-1] == "offline"
    c.bus.set_connected(True)
    pump(hub)
    assert ds.statuses()[-1] == "online"  # A and B said again what they have
    assert set(hub.hashes[b"lm:conns:" + I.encode()]) == {b"a", b"b"}
