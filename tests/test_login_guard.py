"""Issue 10 items 1-4 and the /64 keying: who may spend a password check.

Each test drives MQTT sessions (or the guard itself) in memory with a
password check that is held until released, so "in flight" is exact.
"""

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from linchpin_common.contract import wire
from linchpin_gateway.auth import LoginGuard, TooManyFailures, TooManyInFlight
from linchpin_common.slots import Slots
from linchpin_gateway.ratelimit import RateLimiter, address_key
from linchpin_gateway.router import Router
from linchpin_common.machine import IllegalTransition
from linchpin_gateway.session import AUTHENTICATING, CLOSED, Limits, MQTTSession
from tests.doubles import DEV, INST, USERS, Peer, connect

ATTACKER = "192.0.2.66"


class CountingAuth:
    """An authenticator whose checks wait until released; counts them."""

    revalidate = False  # one node: its own cache is all there is

    def __init__(self):
        self.checks = 0
        self.waiting = []
        self.verified = {}  # the cache: (username, password) -> principal

    def cached(self, username, password):
        return self.verified.get((username, password))

    def authenticate(self, username, password):
        self.checks += 1
        d = defer.Deferred()
        self.waiting.append((d, USERS.get((username, password))))
        return d

    def release(self):
        waiting, self.waiting = self.waiting, []
        for d, result in waiting:
            d.callback(result)


@pytest.fixture
def clock():
    c = Clock()
    c.advance(1_000_000)
    return c


@pytest.fixture
def auth():
    return CountingAuth()


@pytest.fixture
def logins(auth, clock):
    return LoginGuard(auth, clock, RateLimiter(clock, 20, 20.0), RateLimiter(clock, 20, 20.0), in_flight=4)


def attempt(router, logins, clock, user, password, host=ATTACKER):
    p = Peer(router, None, clock, host=host, guard=logins)
    p.feed(connect(user, password))
    return p


def test_a_burst_of_wrong_logins_costs_at_most_budget_plus_in_flight(auth, logins, clock):
    """Bursts of 300 from one address, eight in 12 s: before, about 250
    PBKDF2 runs a burst; now no more than the budget allows (20, plus 4
    refilled in those 12 s), at most 4 at a time."""
    router = Router(clock)
    codes = []
    for _ in range(8):
        burst = [attempt(router, logins, clock, f"{i:032x}", "guess") for i in range(300)]
        assert len(auth.waiting) <= 4
        auth.release()
        codes += [c.return_code for p in burst for c in p.take()]
        clock.advance(1.5)
    assert auth.checks <= 20 + 4
    assert codes.count(4) == auth.checks  # each check was a wrong password
    assert set(codes) == {3, 4, 5}  # 3: its share is in flight; 5: its budget is spent
    # someone else's login is not affected, while the attacker still bursts
    burst = [attempt(router, logins, clock, f"{i:032x}", "guess") for i in range(300)]
    other = attempt(router, logins, clock, DEV, "dpw", host="198.51.100.7")
    assert other.session.state == AUTHENTICATING
    auth.release()
    assert other.take() == [wire.Connack(0)]
    assert all(p.closed for p in burst)


def test_right_credentials_refund_their_reservation(auth, logins, clock):
    router = Router(clock)
    for _ in range(100):  # far more than the budget, all right: never limited
        p = attempt(router, logins, clock, DEV, "dpw")
        auth.release()
        assert p.take() == [wire.Connack(0)]


def test_a_known_principal_is_not_locked_out_by_others_on_its_address(auth, logins, clock):
    """An insider behind the company NAT cannot keep the connector offline."""
    router = Router(clock)
    first = attempt(router, logins, clock, INST, "ipw")
    auth.release()
    assert first.take() == [wire.Connack(0)]
    for _ in range(30):  # the insider empties the address's budget
        p = attempt(router, logins, clock, "e" * 32, "guess")
        auth.release()
    assert p.take() == [wire.Connack(5)]
    clock.advance(3600)  # well past the cache, within the day
    back = attempt(router, logins, clock, INST, "ipw")
    auth.release()
    assert back.take() == [wire.Connack(0)]
    # a device that never logged in from here is limited like anyone
    for _ in range(30):
        p = attempt(router, logins, clock, "e" * 32, "guess")
        auth.release()
    new = attempt(router, logins, clock, DEV, "dpw")
    assert new.take() == [wire.Connack(5)]


def test_guessing_a_known_principal_is_still_slowed(auth, logins, clock):
    router = Router(clock)
    ok = attempt(router, logins, clock, INST, "ipw")
    auth.release()
    assert ok.take() == [wire.Connack(0)]
    codes = []
    for _ in range(40):
        p = attempt(router, logins, clock, INST, "guess")
        auth.release()
        codes += [c.return_code for c in p.take()]
    assert codes.count(4) == 20 and codes[-1] == 5
    assert auth.checks == 1 + 20


def test_known_principal_is_forgotten_after_a_day(auth, logins, clock):
    router = Router(clock)
    attempt(router, logins, clock, INST, "ipw")
    auth.release()
    clock.advance(86400)
    for _ in range(25):
        attempt(router, logins, clock, "e" * 32, "guess")
        auth.release()
    p = attempt(router, logins, clock, INST, "ipw")
    assert p.take() == [wire.Connack(5)]


def test_cached_credentials_are_never_refused(auth, logins, clock):
    router = Router(clock)
    auth.verified[(DEV, "dpw")] = USERS[(DEV, "dpw")]
    for _ in range(25):
        attempt(router, logins, clock, "e" * 32, "guess")
        auth.release()
    checks = auth.checks
    p = attempt(router, logins, clock, DEV, "dpw")
    assert p.take() == [wire.Connack(0)] and auth.checks == checks


def test_impossible_credentials_cost_no_check_but_count(auth, logins, clock):
    for user, password in [("", "x"), ("a" * 65, "x"), (DEV, "p" * 257)]:
        d = logins.login(ATTACKER, user, password)
        assert d.result is None
    assert auth.checks == 0
    for _ in range(17):  # with those 3, the address's budget of 20
        assert logins.login(ATTACKER, "", "x").result is None
    with pytest.raises(TooManyFailures):
        logins.login(ATTACKER, DEV, "dpw")
    assert auth.checks == 0


def test_overload_refunds_the_reservation(clock):
    class Overloaded:
        def cached(self, *a):
            return None

        def authenticate(self, *a):
            from linchpin_gateway.hashing import Overloaded as E
            return defer.fail(E())

    logins = LoginGuard(Overloaded(), clock, RateLimiter(clock, 2, 2.0), RateLimiter(clock, 2, 2.0))
    for _ in range(10):
        logins.login(ATTACKER, DEV, "x").addErrback(lambda f: None)
    assert logins.limiter.allowed(ATTACKER) and logins.in_flight.held(address_key(ATTACKER)) == 0


def test_guard_raises_before_any_check(auth, logins):
    for _ in range(4):
        logins.login(ATTACKER, DEV, "x")
    with pytest.raises(TooManyInFlight):
        logins.login(ATTACKER, DEV, "x")
    auth.release()
    for _ in range(16):
        logins.login(ATTACKER, DEV, "x")
        auth.release()
    with pytest.raises(TooManyFailures) as refused:
        logins.login(ATTACKER, DEV, "x")
    assert refused.value.retry_after >= 1


# -- addresses -------------------------------------------------------------------


@pytest.mark.parametrize("host,key", [
    ("192.0.2.1", "192.0.2.1"),
    ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.9", "192.0.2.9"),
    ("unix", "unix"),
])
def test_address_key(host, key):
    assert address_key(host) == key


def test_an_ipv6_network_shares_one_budget(auth, logins, clock):
    router = Router(clock)
    for i in range(30):  # a fresh address of the same /64 each time
        p = attempt(router, logins, clock, "e" * 32, "guess", host=f"2001:db8:0:7::{i + 1:x}")
        auth.release()
    assert p.take() == [wire.Connack(5)]
    other = attempt(router, logins, clock, DEV, "dpw", host="2001:db8:0:8::1")
    auth.release()
    assert other.take() == [wire.Connack(0)]


def test_slots():
    slots = Slots(2)
    assert slots.acquire("a") and slots.acquire("a") and not slots.acquire("a")
    assert slots.acquire("b")
    slots.release("a")
    slots.release("a")
    slots.release("b")
    assert len(slots) == 0


# -- before CONNACK (item 3) -------------------------------------------------------


def test_reading_is_paused_while_the_password_is_checked(auth, logins, clock):
    router = Router(clock)
    p = attempt(router, logins, clock, DEV, "dpw")
    assert not p.reading
    auth.release()
    assert p.take() == [wire.Connack(0)] and p.reading


def test_small_pipelined_packets_still_wait_for_connack(auth, logins, clock):
    router = Router(clock)
    p = Peer(router, None, clock, host=ATTACKER, guard=logins)
    p.feed(connect(DEV, "dpw"), wire.Subscribe(1, ((f"devices/{DEV}/down", 0),)), wire.Pingreq())
    assert p.take() == []
    auth.release()
    assert p.take() == [wire.Connack(0), wire.Suback(1, (0,)), wire.Pingresp()]


@pytest.mark.parametrize("split", [False, True])
def test_more_than_4_kib_before_connack_is_cut(auth, logins, clock, split):
    """Before: up to 64 pipelined packets of 1 MiB were kept per pending
    login; now nothing beyond 4 KiB after the CONNECT."""
    router = Router(clock)
    p = Peer(router, None, clock, host=ATTACKER, guard=logins)
    big = wire.encode(wire.Publish(f"devices/{DEV}/up", b"x" * 5000))
    if split:
        p.feed(connect(DEV, "dpw"))
        p.session.data_received(big[:3000])
        assert p.closed is None
        p.session.data_received(big[3000:])
    else:
        p.session.data_received(wire.encode(connect(DEV, "dpw")) + big)
    assert p.closed == "too much data before CONNACK"
    assert p.session._queued == [] and p.session.parser.buffered <= 5000
    auth.release()
    assert p.take() == []  # the check's answer finds the session closed


def test_partial_packet_behind_connect_counts(auth, logins, clock):
    router = Router(clock)
    p = Peer(router, None, clock, host=ATTACKER, guard=logins)
    start = wire.encode(wire.Publish(f"devices/{DEV}/up", b"x" * 50_000))[:5000]
    p.session.data_received(wire.encode(connect(DEV, "dpw")) + start)
    assert p.closed == "too much data before CONNACK"


def test_before_connack_a_packet_announcing_more_than_a_message_is_refused_at_once(auth, logins, clock):
    """Its first bytes say it is larger than PRE_LOGIN_MESSAGE: the parser
    refuses it from its header instead of holding it."""
    router = Router(clock)
    p = Peer(router, None, clock, host=ATTACKER, guard=logins)
    start = wire.encode(wire.Publish(f"devices/{DEV}/up", b"x" * 100_000))[:100]
    p.session.data_received(wire.encode(connect(DEV, "dpw")) + start)
    assert p.closed == "malformed packet" and p.session.parser.buffered == 0


# -- the life cycle is explicit ------------------------------------------------------


def test_an_input_that_cannot_happen_is_a_loud_error(clock):
    router = Router(clock)
    s = MQTTSession(router, None, clock, Peer.__new__(Peer), limits=Limits())
    with pytest.raises(IllegalTransition, match="input 'accept' is not allowed in state AWAIT_CONNECT"):
        s._go("accept")
    s.state = CLOSED
    assert s._go("accept") == CLOSED  # a check finishing after the client left: allowed
    with pytest.raises(IllegalTransition):
        s._go("connect")
    clock.advance(60)


def test_the_audit_event_fires_for_failures_not_for_a_refunded_reservation(auth, clock):
    tripped = []
    logins = LoginGuard(auth, clock, RateLimiter(clock, 2, 2.0, on_trip=tripped.append), RateLimiter(clock, 20, 20.0))
    logins.login(ATTACKER, "e" * 32, "guess")
    auth.release()
    logins.login(ATTACKER, DEV, "dpw")  # takes the last token while it is checked...
    auth.release()  # ...and gives it back: right credentials
    assert tripped == []
    logins.login(ATTACKER, "e" * 32, "guess")
    auth.release()
    assert tripped == [ATTACKER]


def test_parallel_wrong_basic_logins_are_checked_at_most_4_at_a_time(tmp_path):
    """Item 1 on the REST side: before, every parallel wrong Basic login was
    hashed, and they filled the shared queue."""
    from treq.testing import StubTreq
    from twisted.internet.testing import MemoryReactorClock

    from linchpin_common.workers import InlineWorker
    from linchpin_gateway.config import GatewayConfig
    from linchpin_gateway.service import Gateway
    from linchpin_gateway.store import SQLiteStore
    from tests.conftest import HeldWorker, basic

    reactor = MemoryReactorClock()
    hashing = HeldWorker()
    store = SQLiteStore(reactor, str(tmp_path / "gw"), worker=InlineWorker())
    gw = Gateway(reactor, store, GatewayConfig(pbkdf2_iterations=100_000), hash_worker=hashing)
    gw.startService()
    try:
        client = StubTreq(gw.site.resource)
        answers = []
        for i in range(50):
            d = client.get("http://gw/api/v1/devices", headers=basic(f"{i:032x}", "guess"))
            d.addCallback(lambda resp: answers.append(resp.code))
        assert len(hashing.jobs) == 4  # the address's share of the hashing queue
        assert answers == [429] * 46
        hashing.release()
        client.flush()
        assert answers.count(401) == 4
    finally:
        store.stop()


def test_many_tiny_packets_before_connack_are_cut_too(auth, logins, clock):
    router = Router(clock)
    p = Peer(router, None, clock, host=ATTACKER, guard=logins)
    p.session.data_received(wire.encode(connect(DEV, "dpw")) + wire.encode(wire.Pingreq()) * 65)
    assert p.closed == "too much data before CONNACK" and p.session._queued == []


# -- the credential cache ----------------------------------------------------------


def test_the_credential_cache_is_bounded_and_makes_room_as_entries_expire(clock):
    from linchpin_gateway.auth import Authenticator

    class Store:
        def instance_hash(self, instance_id):
            return defer.succeed(None)

        def device_auth(self, device_id):
            return defer.succeed((INST, "active", "stored hash"))

    class Hasher:
        checks = 0

        def verify(self, password, encoded):
            Hasher.checks += 1
            return defer.succeed(True)

    authenticator = Authenticator(Store(), Hasher(), clock, cache_ttl=300, cache_max=3)

    def checked(device_id):
        """Whether logging in took a password check (not from the cache)."""
        before = Hasher.checks
        d = authenticator.authenticate(device_id, "pw")
        assert d.result.id == device_id
        return Hasher.checks - before == 1

    ids = [f"{i:032x}" for i in range(4)]
    for device_id in ids[:3]:
        assert checked(device_id)
        clock.advance(10)
    assert [checked(device_id) for device_id in ids[:3]] == [False] * 3
    assert checked(ids[3]) and checked(ids[3])  # full of live entries: not remembered
    clock.advance(300 - 25)  # the first has expired, the others live 5 and 15 s more
    assert checked(ids[3]) and not checked(ids[3])
    assert checked(ids[0]) and checked(ids[0])  # forgotten, and no room for it until the next expires
    assert not checked(ids[1])
    clock.advance(5)
    assert checked(ids[0]) and not checked(ids[0])
    assert len(authenticator._cache) == 3 and sum(map(len, authenticator._by_id.values())) == 3


def test_parallel_failures_that_empty_the_bucket_trip_the_audit_event_once(auth, clock):
    tripped = []
    logins = LoginGuard(auth, clock, RateLimiter(clock, 2, 2.0, on_trip=tripped.append), RateLimiter(clock, 20, 20.0))
    logins.login(ATTACKER, "e" * 32, "guess")
    logins.login(ATTACKER, "f" * 32, "guess")  # both checked at once: the second takes the last token
    auth.release()
    assert tripped == [ATTACKER]  # one emptying, one event
