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
def clock():
    return Clock()


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
    assert a.cluster.online_here == {} and hub.get(b"lm:online:" + I.encode()) is None
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
