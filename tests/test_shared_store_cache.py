"""Several nodes share one store: a credential changed through one node stops
working on every other node at once, cached or not, before any bus message
arrives (the bus only makes the others forget sooner)."""

import pytest
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from linchpin_common.workers import InlineWorker
from linchpin_gateway.accounts import Accounts
from linchpin_gateway.auth import Authenticator, LoginGuard
from linchpin_gateway.hashing import Hasher
from linchpin_gateway.ratelimit import RateLimiter
from linchpin_gateway.router import Router
from linchpin_gateway.store import SQLiteStore


class Node:
    def __init__(self, store, clock, revalidate):
        self.hasher = Hasher(clock, worker=InlineWorker())
        self.auth = Authenticator(store, self.hasher, clock, revalidate=revalidate)
        self.logins = LoginGuard(self.auth, clock, RateLimiter(clock, 20, 20.0), RateLimiter(clock, 20, 20.0))
        self.router = Router(clock)
        self.accounts = Accounts(store, self.hasher, self.auth, self.router, clock, setup_key_ttl=60)
        self.checks = 0
        real = self.hasher.verify

        def counting(password, encoded):
            self.checks += 1
            return real(password, encoded)

        self.hasher.verify = counting

    def login(self, username, password):
        results = []
        self.logins.login("192.0.2.1", username, password).addBoth(results.append)
        (result,) = results
        return result


@pytest.fixture
def shared_store(tmp_path):
    """One store several nodes use, on a clock of its own: (store, clock)."""
    clock = Clock()
    clock.advance(1_800_000_000)
    store = SQLiteStore(clock, str(tmp_path / "shared"), worker=InlineWorker())
    store.start()
    yield store, clock
    store.stop()


@pytest.fixture
def nodes(shared_store):
    store, clock = shared_store
    return [Node(store, clock, revalidate=True) for _ in range(2)], clock


def run(d):
    results = []
    d.addBoth(results.append)
    (result,) = results
    return result


def test_rotation_on_one_node_refuses_the_old_password_on_another_at_once(nodes):
    (a, b), _ = nodes
    created = run(ensureDeferred(a.accounts.register(None)))
    instance_id, old = created.instance_id, created.instance_password
    assert b.login(instance_id, old).id == instance_id
    checks = b.checks
    assert b.login(instance_id, old).id == instance_id and b.checks == checks  # cached: no PBKDF2

    new = run(ensureDeferred(a.accounts.rotate_password(instance_id)))  # node a only; b is not told
    assert b.login(instance_id, old) is None
    assert b.login(instance_id, new).id == instance_id


def test_revocation_on_one_node_refuses_a_cached_device_on_another(nodes):
    (a, b), _ = nodes
    inst = run(ensureDeferred(a.accounts.register(None)))
    device = run(ensureDeferred(a.accounts.add_device(inst.instance_id)))
    device_id, password = run(ensureDeferred(a.accounts.pair_device(device.device_setup_key)))
    assert b.login(device_id, password).id == device_id
    run(ensureDeferred(a.accounts.revoke_device(inst.instance_id, device_id)))
    assert b.login(device_id, password) is None


def test_a_node_alone_takes_its_cache_without_reading_the_store(tmp_path):
    clock = Clock()
    clock.advance(1_800_000_000)
    store = SQLiteStore(clock, str(tmp_path / "alone"), worker=InlineWorker())
    store.start()
    node = Node(store, clock, revalidate=False)
    inst = run(ensureDeferred(node.accounts.register(None)))
    assert node.login(inst.instance_id, inst.instance_password) is not None
    reads = []
    store.instance_hash = lambda *a: reads.append(a)
    assert node.login(inst.instance_id, inst.instance_password).id == inst.instance_id
    assert reads == []
    store.stop()


def test_a_gateway_with_a_bus_revalidates_its_cache(tmp_path):
    """Nodes share a store only when they share a bus: that is when the
    gateway must check a cached login against the store."""
    from twisted.internet.testing import MemoryReactorClock

    from linchpin_gateway.bus import MemoryBus, MemoryHub
    from linchpin_gateway.config import GatewayConfig
    from linchpin_gateway.service import Gateway

    reactor = MemoryReactorClock()
    store = SQLiteStore(reactor, str(tmp_path / "gw"), worker=InlineWorker())
    alone = Gateway(reactor, store, GatewayConfig(), hash_worker=InlineWorker())
    joined = Gateway(reactor, store, GatewayConfig(), hash_worker=InlineWorker(), bus=MemoryBus(MemoryHub(reactor)))
    assert (alone.authenticator.revalidate, joined.authenticator.revalidate) == (False, True)
