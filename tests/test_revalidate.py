"""Live sessions re-validated against a shared store (linchpin_gateway.revalidate):
what another node did while this one could not hear it (bus or store away)
still closes the sessions it should, here, within one check."""

import pytest
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from linchpin_common.workers import InlineWorker
from linchpin_gateway.bus import MemoryBus, MemoryHub
from linchpin_gateway.config import GatewayConfig
from linchpin_gateway.router import CONNECTOR, DEVICE, Principal
from linchpin_gateway.service import Gateway
from linchpin_gateway.store import SQLiteStore
from tests.doubles import FakeSession
from tests.test_shared_store_cache import Node, run, shared_store  # noqa: F401  (fixture)


@pytest.fixture
def world(shared_store):
    return shared_store


def paired(accounts, instance_id):
    device = run(ensureDeferred(accounts.add_device(instance_id)))
    return run(ensureDeferred(accounts.pair_device(device.device_setup_key)))[0]


def test_sessions_of_what_another_node_revoked_or_deleted_are_closed(world):
    """Before: a revocation made while this node was cut off from the bus
    never reached it, and the revoked device went on relaying here."""
    from linchpin_gateway.revalidate import SessionCheck

    store, clock = world
    elsewhere = Node(store, clock, revalidate=True)  # another node; its messages never arrive here
    here = Node(store, clock, revalidate=True)
    one = run(ensureDeferred(elsewhere.accounts.register(None)))
    two = run(ensureDeferred(elsewhere.accounts.register(None)))
    kept, revoked, of_two = paired(elsewhere.accounts, one.instance_id), paired(elsewhere.accounts, one.instance_id), \
        paired(elsewhere.accounts, two.instance_id)
    sessions = {}
    for role, pid, instance in ((CONNECTOR, one.instance_id, one.instance_id), (DEVICE, kept, one.instance_id),
                                (DEVICE, revoked, one.instance_id), (CONNECTOR, two.instance_id, two.instance_id),
                                (DEVICE, of_two, two.instance_id)):
        sessions[pid] = FakeSession()
        here.router.attach(Principal(role, pid, instance), sessions[pid])
    check = SessionCheck(here.router, store, here.auth)
    run(check.run())
    assert all(s.closed is None for s in sessions.values())  # nothing changed yet: nothing closed

    run(ensureDeferred(elsewhere.accounts.revoke_device(one.instance_id, revoked)))
    run(ensureDeferred(elsewhere.accounts.rotate_password(one.instance_id)))  # live sessions stay (contract)
    run(ensureDeferred(elsewhere.accounts.delete_instance(two.instance_id)))
    run(check.run("bus back"))
    assert sessions[revoked].closed == "device revoked"
    assert sessions[two.instance_id].closed == sessions[of_two].closed == "instance deleted"
    assert sessions[kept].closed is None and sessions[one.instance_id].closed is None
    assert {p.id for p in here.router.principals()} == {one.instance_id, kept}
    assert check.closed == 3


def test_many_sessions_are_checked_in_batches(world, monkeypatch):
    from linchpin_gateway import revalidate

    store, clock = world
    node = Node(store, clock, revalidate=True)
    inst = run(ensureDeferred(node.accounts.register(None)))
    ids = [paired(node.accounts, inst.instance_id) for _ in range(7)]
    for device_id in ids:
        node.router.attach(Principal(DEVICE, device_id, inst.instance_id), FakeSession())
    reads = []
    real = store.present
    monkeypatch.setattr(store, "present", lambda i, d: reads.append((len(i), len(d))) or real(i, d))
    monkeypatch.setattr(revalidate, "BATCH", 3)
    check = revalidate.SessionCheck(node.router, store, node.auth)
    run(check.run())
    assert reads == [(1, 3), (0, 3), (0, 1)] and check.closed == 0


def gateway(store, clock, hub, **config):
    return Gateway(clock, store, GatewayConfig(**config), hash_worker=InlineWorker(), bus=MemoryBus(hub))


def test_a_node_checks_its_sessions_when_the_bus_comes_back_and_periodically(world):
    store, clock = world
    hub = MemoryHub(clock)
    gw = gateway(store, clock, hub, revalidate_interval=60)
    gw.cluster.start()
    for service in gw:
        if hasattr(service, "clock") and hasattr(service, "step"):
            service.startService()  # the timers alone; the store is the world's
    runs = gw.session_check.runs
    clock.advance(60)
    assert gw.session_check.runs == runs + 1  # the backstop
    gw.cluster.bus.set_connected(False)
    gw.cluster.bus.set_connected(True)
    assert gw.session_check.runs == runs + 2  # at once when the bus is back


def test_a_node_checks_its_sessions_when_the_store_answers_again(world):
    store, clock = world
    gw = Gateway(clock, store, GatewayConfig(store="postgresql://db.invalid/lm"), hash_worker=InlineWorker())
    assert gw.authenticator.revalidate  # a shared store without a bus: cached logins are checked too
    runs = gw.session_check.runs
    real = store.ping
    store.ping = lambda: (_ for _ in ()).throw(ConnectionError("store away"))
    run(gw._ping_store().addErrback(lambda f: None))
    assert not gw.store_up
    store.ping = real
    run(gw._ping_store())
    assert gw.store_up and gw.session_check.runs == runs + 1
    run(gw._ping_store())
    assert gw.session_check.runs == runs + 1  # only when it came back


def test_a_rest_burst_spread_over_two_nodes_gets_one_budget(tmp_path):
    """Before: each node charged its own bucket and told the other later, so
    49 calls spread over 2 nodes got 49 answers against a budget of 30."""
    from treq.testing import StubTreq

    clock = Clock()
    clock.advance(1_800_000_000)
    hub = MemoryHub(clock)
    nodes = []
    for name in "ab":
        store = SQLiteStore(clock, str(tmp_path / name), worker=InlineWorker())
        gw = Gateway(clock, store, GatewayConfig(rest_limit=30), hash_worker=InlineWorker(), bus=MemoryBus(hub))
        gw.startService()
        nodes.append(gw)
    try:
        stubs = [StubTreq(gw.site.resource) for gw in nodes]
        codes = []
        for n in range(49):  # nothing between the nodes arrives meanwhile (no hub flush)
            stub = stubs[n % 2]
            d = stub.post("http://gw.test/api/v1/devices/setup", json={"device_setup_key": "x" * 22})
            stub.flush()
            codes.append(d.result.code)
        assert codes.count(429) == 19 and len([c for c in codes if c != 429]) == 30
        hub.buses[0].set_connected(False)  # the bus away: each node on its own budget
        d = stubs[0].post("http://gw.test/api/v1/devices/setup", json={"device_setup_key": "x" * 22})
        stubs[0].flush()
        assert d.result.code == 404  # answered from this node's own bucket (5 of its 30 were left)
    finally:
        for gw in nodes:
            gw.stopService()
