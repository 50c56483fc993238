"""The connector's state on a real PostgreSQL, shared by several connectors:
the same answers as the SQLite file, and the pending-key rules of PROTOCOL.md
section 5 when two connectors change one device at once."""

from __future__ import annotations

import threading

import psycopg
import pytest

from linchpin_connector.pgstate import PostgreSQLState, StateUnavailable, redact
from linchpin_connector.state import MAX_PENDING, ConnectorState, NotRegistered, open_state
from tests.services import postgresql  # noqa: F401  (fixture)

D = "d" * 32
KEY = bytes(range(32))


@pytest.fixture
def url(postgresql):  # noqa: F811
    return postgresql.url(postgresql.create_database())


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request, tmp_path):
    """One state of each kind: the rules below hold for both."""
    if request.param == "sqlite":
        s = ConnectorState(str(tmp_path / "c"))
    else:
        s = PostgreSQLState(request.getfixturevalue("url"))
    yield s
    s.close()


def test_registration_devices_and_keys_alike_in_both(state):
    with pytest.raises(NotRegistered):
        state.registration()
    state.save_registration("https://gw", "a" * 32, "pw", KEY)
    assert state.registration() == {"gateway_url": "https://gw", "instance_id": "a" * 32,
                                    "instance_password": "pw", "static_private_key": KEY}
    state.add_device(D, "alice", b"s" * 32)
    ids = [state.add_pending_key(D, bytes([n]) * 32, hello_digest=bytes([n]) * 32) for n in range(6)]
    assert all(isinstance(i, int) for i in ids)
    device = state.device(D)
    assert [k for k, _ in device.pending] == ids[-MAX_PENDING:]  # the newest kept
    assert state.add_pending_key(D, b"x" * 32, hello_digest=bytes([5]) * 32) is None  # that HELLO has its key
    assert state.promote_pending_key(D, ids[-1])
    device = state.device(D)
    assert device.device_secret == bytes([5]) * 32 and device.setup_secret is None and device.pending == ()
    assert state.add_pending_key(D, b"y" * 32) is None  # proven: no more pending keys
    assert [d.device_id for d in state.devices("alice")] == [D] and state.devices("bob") == []
    assert state.remove_device(D) and state.device(D) is None and not state.remove_device(D)


def test_a_pairing_proven_through_one_connector_holds_for_the_other(url):
    a, b = PostgreSQLState(url), PostgreSQLState(url)
    try:
        a.save_registration("https://gw", "a" * 32, "pw", KEY)
        assert b.registration()["instance_id"] == "a" * 32  # registered once, for both
        a.add_device(D, "alice", b"s" * 32)
        key_id = a.add_pending_key(D, KEY, hello_digest=b"h" * 32)  # a answered the HELLO
        assert b.promote_pending_key(D, key_id)  # b saw the confirm (or a HELLO under that key)
        assert a.device(D).device_secret == KEY and a.device(D).pending == ()
        assert b.add_pending_key(D, b"z" * 32, hello_digest=b"h" * 32) is None  # a replay to b: nothing
        assert a.remove_device(D) and b.device(D) is None  # revoked through one, gone for both
    finally:
        a.close()
        b.close()


def at_once(*calls):
    """Run the calls on threads released together; their results in order."""
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(i, call):
        barrier.wait()
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_connectors_proving_two_keys_at_once_prove_exactly_one(url):
    states = [PostgreSQLState(url) for _ in range(2)]
    try:
        states[0].add_device(D, "alice", b"s" * 32)
        for round_ in range(10):
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("UPDATE lmconnector.devices SET setup_secret = %s, device_secret = NULL", (b"s" * 32,))
                conn.execute("DELETE FROM lmconnector.pending_keys")
            k1 = states[0].add_pending_key(D, b"1" * 32, hello_digest=b"1" * 32)
            k2 = states[1].add_pending_key(D, b"2" * 32, hello_digest=b"2" * 32)
            results = at_once(lambda: states[0].promote_pending_key(D, k1),
                              lambda: states[1].promote_pending_key(D, k2))
            assert sorted(results) == [False, True], round_
            proven = states[0].device(D).device_secret
            assert proven == (b"1" * 32 if results[0] else b"2" * 32) and states[1].device(D).pending == ()
    finally:
        for s in states:
            s.close()


def test_one_hello_answered_by_two_connectors_at_once_makes_one_pending_key(url):
    states = [PostgreSQLState(url) for _ in range(3)]
    try:
        states[0].add_device(D, "alice", b"s" * 32)
        results = at_once(*[lambda s=s: s.add_pending_key(D, KEY, hello_digest=b"h" * 32) for s in states])
        assert sum(r is not None for r in results) == 1, results
        assert len(states[0].device(D).pending) == 1
    finally:
        for s in states:
            s.close()


def test_the_tables_live_in_their_own_schema(url):
    s = PostgreSQLState(url)
    s.close()
    with psycopg.connect(url) as conn:
        tables = {row[0] for row in conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')")}
    assert tables == {"lmconnector.version", "lmconnector.config", "lmconnector.devices",
                      "lmconnector.pending_keys"}
    PostgreSQLState(url).close()  # opened again: the schema is there, nothing changes


def test_an_unreachable_server_is_a_clear_error_without_the_password(postgresql):  # noqa: F811
    bad = postgresql.url().replace(f":{postgresql.port}/", ":1/")
    with pytest.raises(StateUnavailable) as caught:
        PostgreSQLState(bad, timeout=1)
    assert postgresql.password not in str(caught.value) and "127.0.0.1:1" in str(caught.value)
    assert postgresql.password not in redact(postgresql.url())


def test_open_state_picks_the_store(tmp_path, url):
    assert isinstance(open_state(str(tmp_path / "c")), ConnectorState)
    s = open_state(str(tmp_path / "unused"), url)
    assert isinstance(s, PostgreSQLState) and not (tmp_path / "unused").exists()
    s.close()
    with pytest.raises(ValueError):
        open_state(str(tmp_path / "c"), "mysql://x")
